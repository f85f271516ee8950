"""glibc's malloc told to keep the memory a training step frees, so the next step reuses it.

By default glibc hands any block over 32 MB (a batch's logits: 41 rows x 128 positions x 4,096 tokens x 4
bytes = 86 MB) straight back to the kernel when it is freed, and the next step maps it again page by page:
on the demo's batch that is ~100,000 page faults a step and a fifth of the process's CPU time in the kernel
(docs/benchmarks.md, "Freed memory kept"). With every block taken from the heap and no trimming, the heap
grows in the first steps to what a step needs and stays there. Torch's CPU tensors come from malloc, so this
is the whole fix; CUDA memory has its own caching allocator and is untouched.
"""

import contextlib
import ctypes
import ctypes.util
import os
import platform

# mallopt's parameter numbers (malloc.h) and glibc's documented default for trimming and the top pad.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_DEFAULT = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc refuses more on 64-bit systems
KEPT = (1 << 31) - 1  # freed memory the heap keeps before it trims (mallopt takes a C int)
PAD = 256 << 20  # what the heap grows by beyond a request when it must grow


def _mallopt():
    """glibc's mallopt, or None (another C library, or a user who tuned malloc through MALLOC_* variables)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(k.startswith(("MALLOC_", "GLIBC_TUNABLES")) for k in os.environ):
        return None  # the user's own settings win
    try:
        return _libc().mallopt
    except (OSError, AttributeError):
        return None


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


_held = 0  # nesting depth: the command's process holds it, and `fit` inside it again


@contextlib.contextmanager
def kept_freed_memory():
    """Within it, freed blocks stay in the process's heap for reuse. Afterwards what the heap kept goes back
    to the system and trimming returns; large blocks stay in the heap up to 32 MB, where glibc's own sliding
    threshold ends once the process has freed one such block (setting any of these fixes that threshold)."""
    global _held
    mallopt = _mallopt() if _held == 0 else None
    if mallopt is not None:
        # No block of its own from the kernel (each would be mapped afresh and unmapped on free): every
        # block comes from the heap, which grows by PAD beyond a request when it must and keeps what is freed.
        for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, KEPT), (_M_TOP_PAD, PAD)):
            mallopt(param, value)
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if mallopt is not None:
            for param, value in (
                (_M_TOP_PAD, _DEFAULT),
                (_M_TRIM_THRESHOLD, _DEFAULT),
                (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX),
                (_M_MMAP_MAX, _DEFAULT_MMAP_MAX),
            ):
                mallopt(param, value)
            _libc().malloc_trim(0)
