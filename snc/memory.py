"""Memory available on this machine for new work (Linux: /proc/meminfo)."""

from __future__ import annotations

from typing import Optional

RESERVE_FRACTION = 0.1  # of the machine's memory, kept for everything else


def available_mb(reserve: float = RESERVE_FRACTION) -> Optional[float]:
    """``MemAvailable`` less ``reserve`` of the machine's memory, in MB (None where /proc does not say)."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[1:2]}
    except (OSError, ValueError):
        return None
    if "MemAvailable" not in info or "MemTotal" not in info:
        return None
    return (info["MemAvailable"] - reserve * info["MemTotal"]) / 1024
