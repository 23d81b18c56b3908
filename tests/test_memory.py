"""The process's heap: what fxopt.compile leaves the heap to do with the memory each call frees."""
import resource
import sys

import pytest
import torch

from fxopt import memory

GLIBC = sys.platform.startswith("linux") and memory._libc() is not None and hasattr(memory._libc(), "mallopt")


def _faults_writing(mb: int) -> int:
    """Minor page faults taken while allocating and writing an ``mb`` MB tensor."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(mb << 18).fill_(1.0)  # mb MB of fp32, freed on return
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_blocks_are_kept_for_the_next_call():
    """A 64 MB block, above glibc's largest default mmap threshold: once the heap has grown to hold it, writing the
    next one of the same size takes almost no page faults (glibc's default maps a fresh block and faults in each
    of its 16,384 pages)."""
    assert memory.retain_freed_memory()
    # the heap first grows to hold the block and whatever was allocated beside it meanwhile
    assert min(_faults_writing(64) for _ in range(6)) < 1000


def test_the_policy_can_be_left_alone(monkeypatch):
    monkeypatch.setenv("FXOPT_RETAIN_FREED_MEMORY", "0")
    assert not memory.retain_freed_memory()
