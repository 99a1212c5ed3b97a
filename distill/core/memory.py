"""Resident memory of this process, as the kernel counts it (Linux ``/proc/self/status``).

The training loop logs it in every row and its summary (``rss_mb``, ``peak_rss_mb``), so a run
folder tells what its batches cost and a benchmark reads that figure instead of reaching into the
loop. Elsewhere than Linux every figure is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def status_mb(key: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) in MB; ``None`` without ``/proc``."""
    try:
        text = STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return None


def reset_peak() -> bool:
    """Reset the high-water mark to the resident set now (``clear_refs`` 5); false where not allowed."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakSince:
    """The resident set at a starting point and its peak since then.

    ``start()`` notes the resident set and resets the kernel's high-water mark, so what ran before
    (imports, loading a teacher, building a cache) does not hide the peak of what follows; where
    the reset is refused the peak counts from the process's start (``since`` says which).
    """

    start_mb: float | None
    since: str

    @classmethod
    def start(cls) -> "PeakSince":
        start = status_mb("VmRSS")
        return cls(start, "reset at start" if reset_peak() else "process start")

    def figures(self) -> dict:
        """``{"rss_mb": now, "peak_rss_mb": peak since the start}`` (MB, ``None`` without ``/proc``)."""
        return {"rss_mb": status_mb("VmRSS"), "peak_rss_mb": status_mb("VmHWM")}

    def summary(self) -> dict:
        """What a run's summary holds: the start, the peak and its growth over the start."""
        now = self.figures()
        peak = now["peak_rss_mb"]
        growth = None if peak is None or self.start_mb is None else peak - self.start_mb
        return {"rss_at_start_mb": self.start_mb, "peak_rss_mb": peak, "growth_mb": growth,
                "peak_since": self.since}
