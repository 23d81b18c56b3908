"""The module ``fxopt.compile`` returns: same call signature and output types as the original model.

It is the composition of three pieces, each in its own module: the call contract (:mod:`fxopt.call_contract`:
binding, input checks, output rebuild), the compiled graph (:mod:`fxopt.compiled_graph`: the optimized graph,
its report and the code that runs it) and, for causal LMs, the generation loop (:mod:`fxopt.generation`).
"""
from __future__ import annotations

import torch

from fxopt.call_contract import CallContract
from fxopt.compiled_graph import CompiledGraph
from fxopt.generation import Generator, GenerationSetup, hf_generate


class CompiledModule(torch.nn.Module):
    """A drop-in replacement for the compiled model (see the module docstring)."""

    def __init__(self, original: torch.nn.Module, graph: CompiledGraph,
                 generation: GenerationSetup | None = None):
        super().__init__()
        # Held outside nn.Module's registries: the original model's weights are not state of this module.
        object.__setattr__(self, "_original", original)
        object.__setattr__(self, "compiled_graph", graph)
        object.__setattr__(self, "_generation", generation)
        object.__setattr__(self, "generator", None)
        self.contract = CallContract(graph.captured)

    @property
    def graph_module(self) -> torch.fx.GraphModule:
        """The optimized graph, for inspection (constants fxopt made are released once compiled)."""
        return self.compiled_graph.graph_module

    @property
    def captured(self):
        return self.compiled_graph.captured

    @property
    def report(self):
        return self.compiled_graph.report

    def forward(self, *args, **kwargs):
        return_dict = self.contract.pop_return_dict(kwargs)
        flat = self.contract.flat_inputs(args, kwargs)
        with torch.no_grad():
            outputs = self.compiled_graph(*flat)
        return self.contract.rebuild(outputs, return_dict)

    def flat_inputs(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """Bind and check one call; returns the tensors in placeholder order."""
        return self.contract.flat_inputs(args, kwargs)

    # -- Hugging Face compatibility -----------------------------------------------------------------
    def prepare_generation(self) -> Generator:
        """Compile the prefill and decode graphs now (``generate()`` does it on its first call)."""
        if self.generator is None:
            if self._generation is None:
                raise AttributeError(f"{type(self._original).__name__} cannot generate: it has no causal LM head")
            object.__setattr__(self, "generator", self._generation.build())
        return self.generator

    def generate(self, *args, **kwargs):
        """Hugging Face ``generate()`` semantics over compiled prefill and decode graphs with a KV cache
        (:mod:`fxopt.generation`); compiled on the first call. ``compiled.generator.last_stats`` tells where the
        time went."""
        if self._generation is None:
            return hf_generate(self._original, self.forward, *args, **kwargs)
        if len(args) > 1:
            raise TypeError("generate() takes input_ids as its only positional argument")
        if args:
            kwargs["input_ids"] = args[0]
        if self.generator is None:  # a request that cannot run fails before the graphs are compiled
            self._generation.check(kwargs)
        return self.prepare_generation().generate(**kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None or name.startswith("__"):
                raise
            return getattr(original, name)

    def extra_repr(self) -> str:
        return (f"model={type(self._original).__name__}, backend={self.compiled_graph.lowered.backend}, "
                f"inputs=({self.contract.describe_inputs()})")
