"""Every error fxopt raises on purpose.

Each one names what went wrong and what the user can do about it. They all derive from
:class:`FxoptError`, so ``except fxopt.FxoptError`` catches any of them and nothing else.
"""
from __future__ import annotations


class FxoptError(Exception):
    """Base class of fxopt's own errors."""


class CaptureError(FxoptError):
    """The model could not be captured into an FX graph (``torch.export`` failed on it)."""


class InputError(FxoptError, TypeError):
    """A compiled model was called with inputs that do not fit what was compiled."""


class VerificationError(FxoptError):
    """A graph broke one of the IR's invariants (see :func:`fxopt.ir.verify`)."""


class PassError(FxoptError):
    """A pass failed, or misreported what it did."""


class NumericsError(FxoptError):
    """A pass changed the model's outputs beyond the tolerance of the numeric check."""


class PipelineSpecError(FxoptError, ValueError):
    """A pipeline spec (``"eliminate-dead-nodes,fuse-qkv{...}"``) names an unknown pass or bad option."""


class AccuracyBudgetError(FxoptError):
    """A requested precision cannot hold the accuracy budget (see :mod:`fxopt.quant_planner`)."""


class CalibrationError(FxoptError, ValueError):
    """Calibration data for a quantized compile that is missing, empty, or does not fit the compiled model."""


class ModelSourceError(FxoptError, ValueError):
    """A MODEL argument that names nothing loadable (:mod:`fxopt.model_source`): the file or function and the fix."""


class ArtifactError(FxoptError):
    """A saved artifact that cannot be written or loaded here (:mod:`fxopt.artifact`): what is wrong and the fix."""
