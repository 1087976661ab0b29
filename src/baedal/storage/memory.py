"""Process memory and disk numbers for the memory and disk alarms.

Cheap enough to poll every second: ``rss_bytes`` reads one small /proc file, and
``disk_free_bytes`` is one statvfs call.
"""

from __future__ import annotations

import os
import resource
import sys

__all__ = ["disk_free_bytes", "rss_bytes", "total_memory_bytes"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size; falls back to the peak (ru_maxrss) off Linux."""
    try:
        with open("/proc/self/statm", "rb") as file:
            return int(file.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is KiB on Linux, bytes on macOS.
        return peak if sys.platform == "darwin" else peak * 1024


def total_memory_bytes() -> int:
    """Physical memory of the machine, capped by a cgroup v2 limit when there is one."""
    total = os.sysconf("SC_PHYS_PAGES") * _PAGE_SIZE
    try:
        with open("/sys/fs/cgroup/memory.max") as file:
            limit = file.read().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total


def disk_free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes available to an unprivileged writer on the filesystem holding ``path``."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize
