"""Peak memory of the running process, for benchmark children (imports nothing heavy: a child's baseline
memory is part of what it measures)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak RSS in MB. VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve,
    so a child started by a parent that had just written a big slide would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
