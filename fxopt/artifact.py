"""``fxopt.save`` / ``fxopt.load``: compile once, load anywhere without the model's Python code or a recompile.

An artifact is a folder:

    minilm.fxopt/
      manifest.json      versions, machine, call signature, generation set-up, report, SHA-256 of each package
      forward.pt2        AOTInductor package of the forward graph (code + frozen weights, see fxopt.aot_package)
      prefill.pt2        causal LMs: the prefill and decode-step graphs behind generate()
      decode.pt2
      tokenizer/         when saved with one (``tokenizer=``): its JSON and vocabulary files, for ``loaded.tokenizer``

``save`` re-runs the portable passes on a fresh copy of each capture and AOT-compiles the result (about as
long as the first compile); ``load`` checks the manifest and every package's checksum, then maps the shared
libraries: a second or two, no recompilation, no Python model object, no pickle anywhere.

Loading refuses, with an :class:`~fxopt.errors.ArtifactError` naming the problem and the fix, an artifact
that is not one, is truncated or corrupted (checksums are verified before any byte of it is executed), misses a
member, comes from another fxopt or torch version, or needs ISA features this CPU lacks. On a machine with the
same ISA but another CPU model or thread count it loads and says so in ``loaded.notes``: the kernels and the
weight layout were chosen for the machine in ``loaded.manifest["machine"]``.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fxopt import native_kernels
from fxopt.aot_package import PackageRunner, compile_package, portable_graph_module
from fxopt.artifact_manifest import FORMAT, FORMAT_VERSION, call_from_json, call_to_json, dtype_name, dtype_of
from fxopt.call_contract import CallSignature
from fxopt.errors import ArtifactError
from fxopt.machine import isa_features, machine_key
from fxopt.memory import retain_freed_memory

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer"
_MAX_MANIFEST_BYTES = 16 * 2**20


def fxopt_version() -> str:
    from fxopt import __version__

    return __version__


# -- save -------------------------------------------------------------------------------------------
def save(compiled, path: str | Path, *, generation: bool | None = None, tokenizer=None, verbose: bool = True) -> Path:
    """Write ``compiled`` (what :func:`fxopt.compile` or :func:`load` returned) as an artifact folder at ``path``.

    ``generation``: also save the prefill and decode graphs of a causal LM, so that the loaded model has
    ``generate()`` (default: whenever the model can generate). ``tokenizer``: a Hugging Face tokenizer saved beside
    the graphs (``loaded.tokenizer``; ``fxopt embed`` needs it). ``path`` must not exist, or be an artifact,
    which is replaced once the new one is complete. Returns the folder.
    """
    from fxopt.loaded_module import LoadedModule

    path = Path(path)
    problem = target_problem(path)
    if problem:
        raise ArtifactError(problem)
    if isinstance(compiled, LoadedModule):
        return _replace(path, lambda tmp: shutil.copytree(compiled.path, tmp, dirs_exist_ok=True))
    setup = getattr(compiled, "_generation", None)
    if generation is None:
        generation = setup is not None
    if generation and setup is None:
        raise ArtifactError(f"{type(compiled._original).__name__} has no causal LM head: nothing to generate; "
                            "save it with generation=False")

    def say(message: str) -> None:
        if verbose:
            print(f"[fxopt] save: {message}", file=sys.stderr, flush=True)

    def write(tmp: Path) -> None:
        start = time.perf_counter()
        graph = compiled.compiled_graph
        graphs = {"forward": (graph, lambda: portable_graph_module(graph))}
        if generation:
            say("capturing the prefill and decode graphs through the portable passes …")
            prefill, decode = _portable_generation_graphs(setup)
            graphs["prefill"] = (prefill, lambda: prefill.graph_module)
            graphs["decode"] = (decode, lambda: decode.graph_module)
        packages = {}
        for name, (source, portable) in graphs.items():
            say(f"AOT-compiling the {name} graph with AOTInductor (the longest step: about as long as a compile) …")
            gm = portable()
            seconds = compile_package(gm, source.captured, tmp / f"{name}.pt2")
            native = native_ops(gm)
            del gm
            packages[name] = {**_member(tmp / f"{name}.pt2"), "compile_seconds": round(seconds, 2),
                              **({"native_ops": native} if native else {})}
            say(f"{name}.pt2: {packages[name]['bytes'] / 2**20:.0f} MiB in {seconds:.1f} s")
        manifest = _manifest(compiled, packages, setup if generation else None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / TOKENIZER)
            manifest["tokenizer"] = [_member(f) | {"file": str(f.relative_to(tmp))}
                                     for f in sorted((tmp / TOKENIZER).iterdir())]
        manifest["save_seconds"] = round(time.perf_counter() - start, 2)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))

    return _replace(path, write)


def native_ops(gm: torch.fx.GraphModule) -> list[str]:
    """The names of fxopt's own compiled ops (:mod:`fxopt.native_kernels`) that ``gm`` calls: a package holding them
    runs only where the library is loaded."""
    return sorted({str(n.target) for n in gm.graph.nodes
                   if isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "fxopt"})


def _portable_generation_graphs(setup):
    """The prefill and decode graphs after the portable passes, not lowered (their constants stay real)."""
    from fxopt.decode_graphs import compile_generation_graphs
    from fxopt.pipeline import split_stages

    options = dataclasses.replace(setup.options, backend="eager")
    graphs = compile_generation_graphs(setup.model, split_stages(setup.pipeline)["portable"], options,
                                       max_cache_len=setup.max_cache_len, max_batch=setup.max_batch,
                                       decode_precision=setup.decode_precision)
    return graphs.prefill, graphs.decode


def _manifest(compiled, packages: dict, setup) -> dict[str, Any]:
    report = compiled.report
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "fxopt": fxopt_version(), "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_key().to_json(),
        "model": report.model,
        "call": call_to_json(CallSignature.of(compiled.captured)),
        "packages": packages,
        "compile_seconds": round(report.capture_seconds + report.passes_seconds + report.lowering_seconds, 2),
        "pipeline": {"spec": report.spec, "stages": report.stages,
                     "saved": "portable stage; AOTInductor's freezing chose the GEMM kernels"},
        "report": str(report),
        "generation": None,
    }
    if setup is not None:
        from fxopt.decode_graphs import cache_layout

        layout = dataclasses.asdict(cache_layout(setup.model, setup.max_cache_len))
        layout["dtype"] = dtype_name(layout["dtype"])
        manifest["generation"] = {"layout": layout, "max_batch": setup.max_batch,
                                  "decode_precision": setup.decode_precision, "vocab_size": setup.vocab_size,
                                  "generation_config": setup.model.generation_config.to_dict()}
    return manifest


def _member(file: Path) -> dict[str, Any]:
    return {"file": file.name, "bytes": file.stat().st_size, "sha256": _sha256(file)}


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def target_problem(path: str | Path) -> str | None:
    """Why an artifact cannot be written at ``path`` (checked before any work starts), or None."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and (path / MANIFEST).is_file()):
        return f"{path} exists and is not an fxopt artifact; choose a new path (an artifact there is replaced)"
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist; create it first or choose another path"
    return None


def _replace(path: Path, write) -> Path:
    """Run ``write(tmp)`` in a temporary folder beside ``path``; move it into place only once it succeeded."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# -- load -------------------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of the artifact at ``path`` (no package is opened)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"no artifact at {path}; save one with fxopt.save(compiled, path) or "
                            "fxopt optimize MODEL --save PATH")
    if not path.is_dir() or not (path / MANIFEST).is_file():
        raise ArtifactError(f"{path} is not an fxopt artifact (a folder with {MANIFEST}): copy the artifact again, "
                            "or recompile it with fxopt optimize MODEL --save PATH")
    file = path / MANIFEST
    if file.stat().st_size > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{file} is {file.stat().st_size} bytes, too large for a manifest: corrupt; recompile")
    try:
        manifest = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{file} is not valid JSON ({e}): the artifact is corrupt or truncated; recompile it "
                            "with fxopt optimize MODEL --save PATH") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{file} is not an fxopt manifest; recompile the artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"the artifact has format version {manifest.get('format_version')}, this fxopt reads "
                            f"{FORMAT_VERSION}; recompile it with this fxopt")
    for key, have in (("fxopt", fxopt_version()), ("torch", torch.__version__)):
        if manifest.get(key) != have:
            raise ArtifactError(f"the artifact was compiled with {key} {manifest.get(key)}, this is {key} {have}: "
                                "compiled code is tied to the versions that built it; recompile it here")
    missing = [k for k in ("machine", "call", "packages", "model") if k not in manifest]
    if missing or "forward" not in manifest.get("packages", {}):
        raise ArtifactError(f"{file} lacks {', '.join(missing) or 'the forward package'}: corrupt; recompile it")
    machine, packages, tokenizer = manifest["machine"], manifest["packages"], manifest.get("tokenizer") or []
    well_formed = (isinstance(machine, dict) and isinstance(machine.get("isa", []), list)
                   and isinstance(packages, dict) and all(isinstance(v, dict) for v in packages.values())
                   and isinstance(tokenizer, list) and all(isinstance(v, dict) for v in tokenizer))
    if not well_formed:
        raise ArtifactError(f"{file}: its machine, packages or tokenizer entries are malformed: corrupt; recompile it")
    return manifest


def machine_notes(manifest: dict[str, Any]) -> list[str]:
    """Refuses a machine without the ISA the code needs; notes other differences from where it was compiled."""
    saved = manifest["machine"]
    lacking = [f for f in saved.get("isa", []) if f not in isa_features()]
    if lacking:
        raise ArtifactError(f"the artifact was compiled for a CPU with {' '.join(lacking)}, which this CPU "
                            f"({machine_key().cpu}) lacks; its kernels would crash here: recompile on this machine")
    here, notes = machine_key(), []
    if saved.get("cpu") != here.cpu:
        notes.append(f"compiled on {saved.get('cpu')}, running on {here.cpu}: kernels and weight layouts were "
                     "chosen there (same ISA); recompile here for choices measured on this machine")
    if saved.get("threads") != here.threads:
        notes.append(f"compiled with {saved.get('threads')} intra-op threads, running with {here.threads}")
    return notes


def check_package(path: Path, name: str, entry: dict[str, Any]) -> Path:
    """The package file of ``entry``, after checking that it is there, whole and unchanged (SHA-256)."""
    file = path / str(entry.get("file", ""))
    if not file.resolve().is_relative_to(path.resolve()) or file == path:
        raise ArtifactError(f"the manifest names {entry.get('file')!r} for {name}, outside the artifact: corrupt; "
                            "recompile it")
    if not file.is_file():
        raise ArtifactError(f"the artifact's {name} file {entry.get('file')} is missing from {path}; recompile it")
    size = file.stat().st_size
    if size != entry.get("bytes"):
        raise ArtifactError(f"{file} is {size} bytes, the manifest says {entry.get('bytes')}: the file is truncated "
                            "or was replaced; copy the artifact again or recompile it")
    if _sha256(file) != entry.get("sha256"):
        raise ArtifactError(f"{file} does not match its checksum: the file is corrupt; copy the artifact again or "
                            "recompile it")
    return file


def load(path: str | Path, *, runners: int = 1):
    """Load the artifact at ``path``: a module called like the compiled one (same input checks, same output types,
    ``generate()`` when the artifact holds the generation graphs). ``runners``: how many calls may run at once
    (each holds its own activation buffers); further callers wait for a free one."""
    from fxopt.loaded_module import LoadedModule

    start = time.perf_counter()
    path = Path(path)
    manifest = read_manifest(path)
    notes = machine_notes(manifest)
    try:
        call = call_from_json(manifest["call"])
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"the manifest's call signature is malformed ({e!r}); recompile the artifact") from None
    runners_by_name = {}
    for name, entry in manifest["packages"].items():
        file = check_package(path, name, entry)
        missing = native_kernels.unloadable_ops(entry.get("native_ops") or [])
        if missing:
            raise ArtifactError(f"{file} calls fxopt's native kernels ({', '.join(entry['native_ops'])}), which "
                                f"cannot be built here ({missing}); recompile the artifact")
        try:
            runners_by_name[name] = PackageRunner(file, runners)
        except RuntimeError as e:
            raise ArtifactError(f"AOTInductor cannot load {file} ({str(e).splitlines()[0]}); recompile the "
                                "artifact") from None
    for entry in manifest.get("tokenizer") or []:
        check_package(path, "tokenizer", entry)
    generation = manifest.get("generation")
    if generation and not {"prefill", "decode"} <= set(runners_by_name):
        raise ArtifactError("the manifest describes generation but the prefill/decode packages are missing; recompile")
    loaded = LoadedModule(path, manifest, call, runners_by_name, notes)
    retain_freed_memory()  # as fxopt.compile does: each call's large outputs reuse the last call's pages
    loaded.load_seconds = time.perf_counter() - start
    return loaded


def generation_layout(manifest: dict[str, Any]):
    from fxopt.decode_graphs import CacheLayout

    layout = dict(manifest["generation"]["layout"])
    layout["dtype"] = dtype_of(layout["dtype"])
    return CacheLayout(**layout)
