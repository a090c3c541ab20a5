"""glibc's malloc and large tensors: keep freed memory in the process for the next tensor.

On Linux, glibc serves a large block from pages freshly mapped from the OS (mmap) and gives
the top of its heap back to the OS on free (trim). A network's forward pass allocates and frees
activations of megabytes each call ([128, 16, 28, 28] in float32 is 6.4 MB), so every call then
touches new pages: one page fault per 4 KiB, and on a virtual machine a fault costs microseconds.
On the reference machine a loop of U-Net, decoder and prior calls took 1.1M faults: 2.5 s of
kernel time in 11 s of CPU time.
`keep_freed_memory` raises malloc's mmap and trim thresholds (mallopt M_MMAP_THRESHOLD and
M_TRIM_THRESHOLD), so freed blocks stay in the heap and the next tensor reuses them: no faults
after the first call. benchmarks/bench_allocator.py measures it in fresh processes in turn.

The CLI and benchmarks/bench.py call it at start; importing diffrep does not (a library should
not change its host's allocator). Skipped where the user chose: MALLOC_MMAP_THRESHOLD_ or
MALLOC_TRIM_THRESHOLD_ set, or another malloc preloaded (LD_PRELOAD), and off glibc. The cost:
memory freed after a peak stays with the process until it exits.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 256 << 20  # blocks up to 256 MiB come from (and return to) the heap
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # a free block at the heap's top goes back only above this
ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name
        return False


def keep_freed_memory() -> bool:
    """Keep freed blocks up to 256 MiB in the heap; True when this call set it.

    Also exports the same settings as glibc's environment variables (`ENV`), so processes this
    one starts (benchmark workers) begin with them.
    """
    if any(os.environ.get(k) for k in (*ENV, "LD_PRELOAD")) or not _glibc():  # set, non-empty
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return False
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False
    os.environ.update(ENV)
    return True
