"""fxopt: a torch.fx pass compiler for fast transformer and LLM inference.

    compiled = fxopt.compile(model, example_inputs)      # capture → passes → Inductor
    compiled(**inputs)                                    # same outputs as model(**inputs)

Public API: :func:`compile`; a causal LM's generation graphs only: :func:`compile_generator`; one graph at a time: :func:`compile_graph` (with a :class:`ConstantPool`
shared by a model's graphs); writing passes: :func:`graph_pass`, :func:`node_rewrite`,
:class:`Rewriter`, :class:`PassResult`, :func:`pattern_pass`; adding them to the default pipeline:
:func:`register_pass`; running them: :class:`PassManager` and its instruments; saved artifacts: :func:`save` and :func:`load`;
the IR: :mod:`fxopt.ir`; errors: :class:`FxoptError` and its subclasses.
"""
from fxopt.errors import (AccuracyBudgetError, ArtifactError, CalibrationError, CaptureError, FxoptError, InputError,
                          ModelSourceError, NumericsError, PassError, PipelineSpecError, VerificationError)
from fxopt.graph_pass import GraphPass, PassContext, PassResult, graph_pass
from fxopt.rewriter import Rewriter, node_rewrite
from fxopt.pattern import Match, PatternError, PatternRule, pattern_pass
from fxopt.pass_manager import Instrument, NumericCheck, PassManager, PrintAfter, Timing, Verify
from fxopt.pipeline import DEFAULT_PIPELINE, build_pipeline, default_pipeline, format_spec, parse_spec
from fxopt.registry import register_pass, unregister_pass
from fxopt.constant_pool import ConstantPool
from fxopt.compiled_graph import CompiledGraph, CompileOptions, compile_graph
from fxopt.api import CompileReport, compile  # noqa: A004 - fxopt.compile is the product's name
from fxopt.generator_compile import compile_generator
from fxopt.artifact import load, save
from fxopt import passes  # noqa: E402,F401 - the pass library, after the API it is written with

__version__ = "0.1.0"

__all__ = [
    "compile", "compile_generator", "CompileReport", "save", "load",
    "graph_pass", "node_rewrite", "pattern_pass", "PatternRule", "PatternError", "Match", "GraphPass", "PassContext", "PassResult", "Rewriter",
    "PassManager", "Instrument", "NumericCheck", "PrintAfter", "Timing", "Verify",
    "DEFAULT_PIPELINE", "default_pipeline", "build_pipeline", "parse_spec", "format_spec", "register_pass",
    "unregister_pass",
    "compile_graph", "CompiledGraph", "CompileOptions", "ConstantPool",
    "FxoptError", "CaptureError", "InputError", "NumericsError", "PassError", "PipelineSpecError",
    "VerificationError", "AccuracyBudgetError", "CalibrationError", "ModelSourceError",
    "ArtifactError",
]
