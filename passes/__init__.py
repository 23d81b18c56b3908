"""fxopt's pass library: one file per pass, each a :class:`fxopt.GraphPass` built with the public API.

``BUILTIN_PASSES`` lists them in the order of the default pipeline (see :mod:`fxopt.pipeline`).
"""
from fxopt.passes.eliminate_dead_nodes import eliminate_dead_nodes

BUILTIN_PASSES = (
    eliminate_dead_nodes,
)

__all__ = ["BUILTIN_PASSES", "eliminate_dead_nodes"]
