"""fxopt's command-line tools (installed as ``fxopt.tools``; the ``fxopt`` console script is ``cli.main``)."""
