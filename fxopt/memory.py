"""The process's heap: freed memory given back to the OS after a compilation, and kept between calls.

Compiling a model allocates and frees hundreds of megabytes (example outputs of every numeric check, fused
weights that Inductor repacks, its own temporaries). glibc keeps freed blocks in its heap, so the process's
resident memory stays high although nothing uses them: on SmolLM2, 1,961 MB resident after compile and
1,612 MB once the heap is trimmed. :func:`trim_heap` asks glibc to return them (``malloc_trim``); elsewhere it
does nothing.

Running is the other way round. glibc serves every block above its mmap threshold (32 MiB at most, by default)
with a fresh ``mmap`` and unmaps it on free, so a compiled model that returns a large output pays for the kernel
faulting in and zeroing every page of it again on each call. SmolLM2's prefill logits are 256 × 49,152 fp32 =
50 MB: measured on an Intel Xeon (2 threads), the kernel that writes them took 20–22 ms into a fresh block and
4.8–6 ms into one the heap kept, about a sixth of the bf16 model's call. :func:`retain_freed_memory` makes the
heap keep such blocks for the next call, as ONNX Runtime's and OpenVINO's arenas do: every ``fxopt.compile`` and
``fxopt.load`` sets it for the process (``FXOPT_RETAIN_FREED_MEMORY=0`` leaves glibc's defaults). It is
process-wide, so uncompiled code in the same process (the eager model a benchmark compares against) gains too;
the memory a process holds at rest stays near its peak instead of falling back after each call.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim_heap(collect: bool = True) -> bool:
    """Return the heap's free pages to the OS (after collecting garbage, with ``collect``); True where glibc
    did it."""
    if collect:
        gc.collect()
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: blocks up to this size come from the heap and stay there when freed; free memory at its top up to this size
#: is kept, not trimmed
_RETAINED_BYTES = 1 << 30


def retain_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 1 GiB for reuse instead of unmapping them (module docstring): True
    where it took effect; False where it is not glibc or ``FXOPT_RETAIN_FREED_MEMORY=0`` says not to. Explicit
    :func:`trim_heap` calls still give memory back."""
    if os.environ.get("FXOPT_RETAIN_FREED_MEMORY", "1") == "0":
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    # a glibc that caps the mmap threshold lower refuses it (returns 0): then no block is mmapped at all
    served = libc.mallopt(_M_MMAP_THRESHOLD, _RETAINED_BYTES) or libc.mallopt(_M_MMAP_MAX, 0)
    return bool(served and libc.mallopt(_M_TRIM_THRESHOLD, _RETAINED_BYTES))


def reset_peak_rss() -> bool:
    """Start measuring the process's peak resident memory anew (Linux: ``/proc/self/clear_refs``), so that
    :func:`peak_rss_mb` tells the peak of what runs next (a compiled model generating) apart from the compile's;
    False where the OS does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident memory in MB since it started or since :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
