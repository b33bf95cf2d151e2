"""Keeping a long slide run's resident memory flat.

glibc serves blocks above its mmap threshold (128 KiB) with mmap and returns them to the system on
free, but raises the threshold to the size of each such block freed, up to 32 MiB. After the first
tile, tile-sized buffers (150 KiB to 1 MiB: pixels, scores, blended blocks) therefore come from the
heap, where the churn of the reader threads fragments it, and RSS creeps up with the number of tiles.
Measured on synthetic slides of 400 and 1,400 tiles: peak RSS 992 and 1,040 MB, RSS at the end 842 and
895 MB; with the threshold pinned, 826 and 841 MB, and 642 and 643 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (which also turns off its dynamic raising); False where there is no
    glibc (macOS, musl), which changes nothing else."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
