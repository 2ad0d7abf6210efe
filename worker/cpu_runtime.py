"""The process settings a CPU worker runs fastest with, applied when it starts, before torch loads.

- **Freed memory stays in the heap.** glibc's malloc gives blocks of 32 MiB and more (most feature
  maps of a stage at 640x360) their own mmap and unmaps them on free, so every stage evaluation touches
  fresh pages that the kernel must zero and map: about 300,000 page faults per `lite` stage at 640x360,
  a quarter of its CPU time. With mmap off, no trimming and one malloc arena (the compute thread is not
  the main thread, and a thread arena cannot hold blocks this big), the next evaluation reuses the same
  memory with no fault. The cost: the process's resident memory stays at its peak between requests, as
  onnxruntime's own arena does.
- **...until the worker is idle.** With no session for ``--idle-release`` seconds the worker drops its
  caches and calls ``return_freed_memory`` (glibc's ``malloc_trim(0)``), which gives the heap's free
  pages back to the kernel once, when nothing will reuse them soon.
- **Idle threads sleep.** OpenMP (torch's intra-op threads) spins while a thread waits for the others;
  on a CPU that other processes share, the spinning thread holds a core that the thread it waits for
  needs. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep. It is read when torch loads OpenMP, so
  it is set only before torch is imported, and never over the user's own setting.

Torch-free: the worker's command line calls ``configure`` before the compute thread imports torch.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt() parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
#: Free memory at the top of the heap above this is still returned to the kernel (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of returning it to the kernel.

    Call it before other threads start (the arena limit applies to arenas not made yet). Returns False,
    changing nothing, where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1)))


def return_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel now (glibc ``malloc_trim(0)``, every arena).

    Returns whether anything was released; False, doing nothing, where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    malloc_trim = ctypes.CDLL(None).malloc_trim
    malloc_trim.argtypes = [ctypes.c_size_t]
    return malloc_trim(0) == 1


def wait_passively() -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` for torch's OpenMP threads, unless the user set a policy or torch is
    already loaded (then it could no longer apply). Returns whether it was set here."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def configure() -> dict[str, bool]:
    """Apply both settings; returns which ones took effect (for the worker's log)."""
    return {"keep_freed_memory": keep_freed_memory(), "omp_wait_passive": wait_passively()}
