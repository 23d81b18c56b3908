"""The module :func:`fxopt.load` returns: a saved artifact, called like the compiled model it came from.

Same call contract as :class:`~fxopt.compiled_module.CompiledModule` (binding to the original ``forward``'s
signature, input checks, the original output types) and, for causal LMs saved with their generation graphs,
the same ``generate()`` loop (:class:`fxopt.generation.Generator`) over the loaded prefill and decode packages.
It holds no Python model object: only the packages and the manifest.

    loaded = fxopt.load("minilm.fxopt")
    out = loaded(**tokenizer(["a sentence"], return_tensors="pt"))   # BaseModelOutputWithPooling
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fxopt.aot_package import PackageRunner
from fxopt.call_contract import CallContract, CallSignature


class LoadedModule(torch.nn.Module):
    """A loaded artifact (see the module docstring). ``manifest`` is its JSON manifest, ``notes`` what differs
    between this machine and the one it was compiled on."""

    def __init__(self, path: Path, manifest: dict[str, Any], call: CallSignature,
                 runners: dict[str, PackageRunner], notes: list[str]):
        super().__init__()
        self.path = Path(path)
        self.manifest = manifest
        self.notes = notes
        self.contract = CallContract(call)
        self.load_seconds = 0.0
        object.__setattr__(self, "runners", runners)
        object.__setattr__(self, "generator", None)

    @property
    def tokenizer(self):
        """The tokenizer saved with the artifact (``fxopt.save(..., tokenizer=...)``); None without one."""
        if not self.manifest.get("tokenizer"):
            return None
        if "_tokenizer" not in self.__dict__:
            from transformers import AutoTokenizer

            from fxopt.artifact import TOKENIZER

            object.__setattr__(self, "_tokenizer", AutoTokenizer.from_pretrained(self.path / TOKENIZER))
        return self.__dict__["_tokenizer"]

    @property
    def report(self) -> str:
        """The compile report of the model this artifact was saved from."""
        return self.manifest.get("report", "")

    def forward(self, *args, **kwargs):
        return_dict = self.contract.pop_return_dict(kwargs)
        flat = self.contract.flat_inputs(args, kwargs)
        with torch.no_grad():
            outputs = self.runners["forward"](*flat)
        return self.contract.rebuild(outputs, return_dict)

    def flat_inputs(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        return self.contract.flat_inputs(args, kwargs)

    def prepare_generation(self):
        if self.generator is None:
            generation = self.manifest.get("generation")
            if not generation:
                raise AttributeError(f"the artifact {self.path} has no generation graphs: save a causal LM with "
                                     "fxopt.save(compiled, path) (generation=True) to generate from the loaded model")
            from transformers import GenerationConfig

            from fxopt.artifact import generation_layout
            from fxopt.decode_graphs import GenerationGraphs
            from fxopt.generation import Generator

            graphs = GenerationGraphs(self.runners["prefill"], self.runners["decode"], generation_layout(self.manifest),
                                      generation["max_batch"])
            config = GenerationConfig.from_dict(generation["generation_config"])
            object.__setattr__(self, "generator", Generator(graphs, config, generation["vocab_size"]))
        return self.generator

    def generate(self, *args, **kwargs):
        """Hugging Face ``generate()`` semantics over the loaded prefill and decode graphs (see
        :meth:`fxopt.compiled_module.CompiledModule.generate`)."""
        if len(args) > 1:
            raise TypeError("generate() takes input_ids as its only positional argument")
        if args:
            kwargs["input_ids"] = args[0]
        return self.prepare_generation().generate(**kwargs)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, model={self.manifest.get('model')}, inputs=({self.contract.describe_inputs()})"
