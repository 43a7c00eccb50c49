"""Memory of a run: peak resident memory per phase (Linux; elsewhere the whole
process's peak), and handing freed heap memory back to the OS (glibc).

Linux keeps a process's peak resident set size (VmHWM) and lets the process
reset it (`echo 5 > /proc/self/clear_refs`), so a run can say how much memory
each phase needed rather than only the largest of them.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status ("VmRSS", "VmHWM") in MiB; None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """The peak resident set size since the last reset (or since the start), in MiB."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


def rss_mb() -> float | None:
    """The resident set size now, in MiB (Linux; None elsewhere)."""
    return _status_mb("VmRSS")


def reset_peak() -> bool:
    """Start a new peak from the current resident size; False where the OS cannot."""
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


class PhasePeaks:
    """`mark(phase)` at the end of each phase records that phase's peak and starts the next.
    `peaks` maps each phase to its peak MiB and "run" to the largest of them. Where the
    OS cannot reset the peak, each phase reads the process's peak so far. The reset is
    process-wide: a caller timing its own peak around compare() should read it per phase.
    Where CUDA is in use, `cuda_peaks` holds the same for the current device's allocated
    memory (torch.cuda.max_memory_allocated, reset per phase); else it stays empty."""

    def __init__(self):
        self.resettable = reset_peak()
        self.peaks: dict[str, float | None] = {}
        self.cuda_peaks: dict[str, float] = {}
        if _cuda_in_use():
            import torch

            torch.cuda.reset_peak_memory_stats()

    def mark(self, phase: str) -> None:
        peak = peak_rss_mb()
        self.peaks[phase] = round(peak, 1)
        self.peaks["run"] = max(self.peaks.get("run") or 0.0, round(peak, 1))
        if self.resettable:
            reset_peak()
        if _cuda_in_use():
            import torch

            cuda = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            self.cuda_peaks[phase] = cuda
            self.cuda_peaks["run"] = max(self.cuda_peaks.get("run", 0.0), cuda)
            torch.cuda.reset_peak_memory_stats()


_libc = None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim); a no-op elsewhere.

    glibc returns freed memory at the top of its heap only: one small block that
    outlives a batch (a row of the positions table, say) pins every freed page
    below it, so without this the resident size of a long pass creeps up batch
    after batch although nothing but the tables is kept.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
