"""What a MODEL argument of the ``fxopt`` commands names, loaded: the model and a way to make its inputs.

A MODEL is one of

* a **bundled model**: ``minilm`` or ``smollm2`` (:mod:`fxopt.models`), inputs from real English text;
* a **local Hugging Face checkpoint**: a directory with ``config.json`` and weights (``*.safetensors`` or
  ``pytorch_model*.bin``), a tokenizer if it has one. The class comes from the config's ``architectures``
  (``LlamaForCausalLM``, ``BertForSequenceClassification``…; ``AutoModel`` when it names none). A directory or a
  ``config.json`` without weights gives the architecture with random weights (said on stderr). Inputs: the
  tokenizer's encoding of real text, else random token ids;
* ``module:factory``: a function ``factory()`` in an importable module (a ``.py`` file in the current
  directory works) that returns ``(model, example_inputs)``, the inputs a dict of keyword arguments or a
  tuple of positional ones. If ``factory`` takes ``batch`` and ``seq`` keyword arguments, ``--batch``/``--seq``
  are passed to it (it is called again for inputs of another size; only its inputs are kept then). Importing the module may also register passes (:func:`fxopt.register_pass`), which then
  work in ``--passes`` specs.

Anything else, a checkpoint that cannot be read, or a factory that returns something else → one
:class:`ModelSourceError` line naming the file or the function and the problem, never a transformers traceback::

    source = load_source("./my-checkpoint")
    compiled = fxopt.compile(source.model, source.inputs(batch=4, seq=64))
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fxopt.errors import ModelSourceError


@dataclass
class ModelSource:
    """A loaded MODEL: ``inputs(batch, seq)`` makes example inputs (a dict of keyword arguments or a tuple)."""

    name: str
    model: torch.nn.Module
    make_inputs: Callable[[int, int], Any]
    tokenizer: Any = None
    kind: str = "module"  # bundled, checkpoint, config, factory

    def inputs(self, batch: int, seq: int):
        return self.make_inputs(batch, seq)

    @property
    def is_causal_lm(self) -> bool:
        return hasattr(self.model, "generate") and type(self.model).__name__.endswith("ForCausalLM")


def spec_problem(spec: str) -> str | None:
    """What is wrong with a MODEL argument that can be told without loading anything (None if nothing)."""
    from fxopt import models

    if spec in models.MODEL_NAMES or Path(spec).exists() or is_factory_spec(spec):
        return None
    return (f"unknown model {spec!r}: give {' or '.join(models.MODEL_NAMES)}, a Hugging Face checkpoint directory "
            "(config.json + weights), a config.json, or module:factory")


def load_source(spec: str) -> ModelSource:
    """Load a MODEL argument (see the module docstring)."""
    from fxopt import models

    if spec in models.MODEL_NAMES:
        real = models.load(spec)
        return ModelSource(spec, real.model, real.inputs, real.tokenizer, "bundled")
    path = Path(spec)
    if path.exists():
        return _load_checkpoint(path)
    if is_factory_spec(spec):
        return _load_factory(spec)
    raise ModelSourceError(spec_problem(spec))


# --------------------------------------------------------------------------------------------------
# module:factory


def is_factory_spec(spec: str) -> bool:
    """``module:factory`` (not a path that happens to hold a colon)."""
    return ":" in spec and not spec.startswith((".", "/")) and not Path(spec).exists()


def import_factory_module(spec: str):
    """Import the module of a ``module:factory`` MODEL (the current directory first on the path, as ``python``
    would find a ``my_model.py`` there). Commands call it before they read ``--passes``: importing the module
    may register the passes the spec names."""
    module_name = spec.partition(":")[0]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ModelSourceError(f"{spec}: cannot import module {module_name!r} ({e})") from None


def _load_factory(spec: str) -> ModelSource:
    module = import_factory_module(spec)
    attr = spec.partition(":")[2]
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSourceError(f"{spec}: module {module.__name__!r} has no function {attr!r}")
    takes_shape = {"batch", "seq"} <= set(inspect.signature(factory).parameters)

    def call(batch=None, seq=None):
        result = factory(batch=batch, seq=seq) if takes_shape and batch is not None else factory()
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)
                and isinstance(result[1], (dict, tuple, list, torch.Tensor))):
            raise ModelSourceError(f"{spec} must return (model, example_inputs) with a torch.nn.Module and a dict "
                                   f"or tuple of inputs; it returned {type(result).__name__}")
        inputs = result[1]
        return result[0], (inputs,) if isinstance(inputs, torch.Tensor) else inputs

    model, _ = call()

    def inputs(batch, seq):
        return call(batch, seq)[1] if takes_shape else call()[1]

    return ModelSource(spec, model.eval(), inputs, None, "factory")


# --------------------------------------------------------------------------------------------------
# Hugging Face checkpoints


def _load_checkpoint(path: Path) -> ModelSource:
    from fxopt.models import quiet_hf_imports

    quiet_hf_imports()
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    directory = path if path.is_dir() else path.parent
    config_path = path if path.is_file() else path / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{path}: no config.json, so not a Hugging Face checkpoint directory")
    config_dict = _read_json(config_path)
    if "model_type" not in config_dict:
        raise ModelSourceError(f"{config_path}: no 'model_type', so transformers cannot tell the architecture")
    try:
        config = transformers.AutoConfig.from_pretrained(str(directory if path.is_dir() else config_path))
    except (ValueError, KeyError, OSError) as e:
        raise ModelSourceError(f"{config_path}: {_first_line(e)} (transformers {transformers.__version__})") from None
    model_class = _model_class(config, transformers)
    weights = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("pytorch_model*.bin")) \
        if path.is_dir() else []
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file)
    if weights:
        try:
            model = model_class.from_pretrained(str(directory), dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - a checkpoint's many ways to fail become one line
            raise ModelSourceError(f"{directory}: cannot load the weights with {model_class.__name__}: "
                                   f"{_first_line(e)}") from None
        kind = "checkpoint"
    else:
        print(f"[fxopt] {path}: no weights found (*.safetensors, pytorch_model*.bin): {model_class.__name__} with "
              "random weights", file=sys.stderr, flush=True)
        torch.manual_seed(0)
        model = model_class.from_config(config) if model_class is transformers.AutoModel else model_class(config)
        kind = "config"
    tokenizer = _tokenizer(directory, transformers) if path.is_dir() else None
    vocab = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "vocab_size", None)

    def inputs(batch, seq):
        if tokenizer is not None:
            from fxopt.models import text_batch
            return text_batch(tokenizer, batch, seq)
        ids = torch.randint(0, min(vocab or 1000, 1000), (batch, seq), generator=torch.Generator().manual_seed(0))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return ModelSource(str(path), model.eval(), inputs, tokenizer, kind)


def _model_class(config, transformers):
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _tokenizer(directory: Path, transformers):
    if not any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - inputs fall back to random ids, said once
        print(f"[fxopt] {directory}: the tokenizer does not load ({_first_line(e)}); using random token ids",
              file=sys.stderr)
        return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ModelSourceError(f"{path}: not a text file") from None
    except json.JSONDecodeError as e:
        raise ModelSourceError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise ModelSourceError(f"{path}: a JSON object was expected, found {type(data).__name__}")
    return data


def _check_safetensors(file: Path) -> None:
    """A truncated or corrupt safetensors file, named, before transformers reads it."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelSourceError(f"{file}: truncated ({size} bytes; not even a safetensors header)")
        header_len = struct.unpack("<Q", head)[0]
        if header_len > size - 8:
            raise ModelSourceError(f"{file}: corrupt or truncated (its header claims {header_len} bytes, the file has "
                                   f"{size})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelSourceError(f"{file}: corrupt (its header is not valid JSON)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    if 8 + header_len + end > size:
        raise ModelSourceError(f"{file}: truncated ({size} bytes; its tensors need {8 + header_len + end}): "
                               "download or save it again")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
