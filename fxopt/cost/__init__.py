"""The cost model: FLOPs and bytes per node as sympy formulas of the dynamic dimensions.

    report = fxopt.cost.estimate(compiled.graph_module)
    report.flops                      # 12*batch*seq**2*... + ... (a sympy expression)
    report.at(batch=8, seq=128)       # numbers: flops, bytes, per category
    report.unknown_ops                # ops without a rule, by name (never counted as zero silently)

``roofline`` adds this machine's measured peaks and a time estimate per node.
"""
from fxopt.cost.estimate import CostReport, NodeCost, estimate
from fxopt.cost.roofline import MachinePeaks, machine_peaks, predict_seconds

__all__ = ["CostReport", "NodeCost", "estimate", "MachinePeaks", "machine_peaks", "predict_seconds"]
