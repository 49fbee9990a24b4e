"""What the audio path counts, and how ``--measure``, STATUS= and the logs report it.

The callbacks only bump integers and write into a preallocated ring of block
times; the reporter (main thread) reads them once a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import BUDGET_MS, BUDGET_NS


class BlockStats:
    """Counters the audio callbacks update (single writer each; reads may be a block stale)."""

    def __init__(self, size: int = 8192) -> None:
        self.times = np.zeros(size, np.int64)  # engine ns per block, a ring
        self.size = size
        self.blocks = 0  # input blocks processed
        self.outputs = 0  # output callbacks served
        self.input_overflows = 0
        self.output_underflows = 0
        self.late = 0  # blocks whose processing took longer than 8 ms
        self.callback_errors = 0
        self.last_error: BaseException | None = None
        # Lost time: 16 kHz input samples that the stream clock says passed
        # but never reached the engine, and how many times (input callback).
        self.gap_samples = 0
        self.gaps = 0
        # The clock bridge's: reads that found samples missing, and re-centrings.
        self.missed = 0
        self.resyncs = 0
        # Whole 128-sample blocks the bridge dropped or repeated to undo a step in its fill.
        self.dropped = 0
        self.inserted = 0

    def record(self, ns: int) -> None:
        self.times[self.blocks % self.size] = ns
        self.blocks += 1
        if ns > BUDGET_NS:
            self.late += 1

    def times_since(self, start: int) -> np.ndarray:
        """Block times (ms) of the blocks numbered ``start`` onwards (at most the ring's size)."""
        end = self.blocks
        start = max(start, end - self.size)
        idx = np.arange(start, end) % self.size
        return self.times[idx] / 1e6


@dataclass(frozen=True)
class Latency:
    """End-to-end delay, microphone to loopback, in ms."""

    algorithmic: float
    input: float
    buffer: float
    output: float

    @property
    def total(self) -> float:
        return self.algorithmic + self.input + self.buffer + self.output

    def __str__(self) -> str:
        return (f"{self.total:.1f} ms = {self.algorithmic:.1f} algorithmic + {self.input:.1f} input "
                f"+ {self.buffer:.1f} buffer + {self.output:.1f} output")


@dataclass(frozen=True)
class Snapshot:
    """One report's worth of figures."""

    seconds: float
    blocks: int
    mean_ms: float
    p99_ms: float
    max_ms: float
    input_overflows: int
    output_underflows: int
    missed: int
    resyncs: int
    late: int
    latency: Latency

    @property
    def budget_share(self) -> float:
        return self.mean_ms / BUDGET_MS

    @property
    def xruns(self) -> int:
        return self.input_overflows + self.output_underflows

    def line(self) -> str:
        return (f"[{self.seconds:6.1f} s] engine {self.mean_ms:.3f} ms/block (p99 {self.p99_ms:.3f}, "
                f"max {self.max_ms:.3f}) = {100 * self.budget_share:.1f}% of 8 ms | xruns in "
                f"{self.input_overflows} out {self.output_underflows} | deadline misses {self.missed} | "
                f"latency {self.latency}")

    def status(self, mode: str, model: str) -> str:
        return (f"{mode} {model}: {self.mean_ms:.2f} ms/block, xruns {self.xruns}, "
                f"misses {self.missed}, latency {self.latency.total:.0f} ms")


def summarize(times_ms: np.ndarray) -> tuple[float, float, float]:
    if len(times_ms) == 0:
        return 0.0, 0.0, 0.0
    return float(times_ms.mean()), float(np.percentile(times_ms, 99)), float(times_ms.max())
