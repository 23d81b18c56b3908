"""The machine fxopt runs on, as a key: CPU model, the ISA features that decide which kernels exist, the
intra-op thread count and the torch version.

Everything fxopt measures or chooses for one machine — the GEMM library per shape, the roofline peaks,
later the int8 kernels — is keyed by :func:`machine_key`, so a choice made on one host is never silently
reused on another (two hosts of one cloud instance type have differed 2× in GEMM speed). Caches live in
:func:`cache_dir` (``$XDG_CACHE_HOME/fxopt`` or ``~/.cache/fxopt``).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

#: The CPU flags that change which kernels torch and Inductor can use (``/proc/cpuinfo`` spelling).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16", "amx_int8")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_features() -> tuple[str, ...]:
    """The flags of :data:`ISA_FLAGS` this CPU has (empty where ``/proc/cpuinfo`` is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return tuple(f for f in ISA_FLAGS if f in flags)
    except OSError:
        pass
    return ()


@dataclass(frozen=True)
class MachineKey:
    """What a machine-specific choice depends on."""

    cpu: str
    isa: tuple[str, ...]
    threads: int
    torch: str

    def digest(self) -> str:
        return hashlib.sha1(f"{self.cpu}|{','.join(self.isa)}|{self.threads}|{self.torch}".encode()).hexdigest()[:12]

    def describe(self) -> str:
        return f"{self.cpu} [{' '.join(self.isa) or 'no AVX2'}], {self.threads} threads, torch {self.torch}"

    def to_json(self) -> dict:
        return {**asdict(self), "isa": list(self.isa)}


def machine_key() -> MachineKey:
    return MachineKey(cpu_model(), isa_features(), torch.get_num_threads(), torch.__version__)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fxopt"


def cache_file(kind: str) -> Path:
    """``~/.cache/fxopt/<kind>-<machine digest>.json``: one file per kind of measurement and machine."""
    return cache_dir() / f"{kind}-{machine_key().digest()}.json"


def writable_output(path: str) -> str | None:
    """Why ``path`` cannot be written (checked before any work starts), or None when it can."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        return f"{path} is a directory; give a file name"
    if not parent.is_dir():
        return f"the folder {parent} does not exist; create it first or choose another path"
    if not os.access(parent, os.W_OK):
        return f"the folder {parent} is not writable"
    return None


def clear_cache() -> list[Path]:
    """Delete fxopt's caches (machine peaks, GEMM timings, numeric-check verdicts, verified graphs, precision
    plans, builds of the native kernels) for every machine; returns what it removed."""
    removed = []
    if cache_dir().is_dir():
        for f in sorted(cache_dir().glob("*.json")):
            f.unlink()
            removed.append(f)
        for d in sorted(cache_dir().glob("native-*")):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
