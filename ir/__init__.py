"""fxopt's IR: torch.fx graphs captured by ``torch.export``, a canonical printer and a verifier."""
from fxopt.ir.capture import CapturedModel, DimRange, InputSlot, capture
from fxopt.ir.printer import format_graph, format_node
from fxopt.ir.verifier import find_problems, verify

__all__ = ["CapturedModel", "DimRange", "InputSlot", "capture", "format_graph", "format_node",
           "find_problems", "verify"]
