"""What the audio path counts, and how ``--measure``, STATUS=, the state file and the logs report it.

The callbacks only bump integers and write into a preallocated ring of block
times; the supervisor (main thread) reads them once a second, turns them into
a `Snapshot` and, for ``--plot``, appends one row to a preallocated `Timeline`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from .constants import BUDGET_MS, BUDGET_NS, RATE


class BlockStats:
    """Counters of one daemon run, across reopens and reloads (one writer each; reads may be a block stale).

    Writers: the input callback (``blocks``, ``times``, ``late``,
    ``input_overflows``, ``gap_samples``, ``gaps``), the output callback
    (``outputs``, ``output_underflows``), the clock bridge (``missed``,
    ``resyncs``), either callback (``callback_errors``, ``last_error``) and
    the supervisor (``streams_lost``).  Nothing resets them.
    """

    def __init__(self, size: int = 8192) -> None:
        self.times = np.zeros(size, np.int64)  # engine ns per block (per 128 samples of a longer call), a ring
        self.size = size
        self.blocks = 0  # input blocks processed (calls, at a rate whose call is not one block)
        self.outputs = 0  # output callbacks served
        self.input_overflows = 0
        self.output_underflows = 0
        self.late = 0  # blocks whose processing took longer than 8 ms
        self.callback_errors = 0
        self.last_error: BaseException | None = None
        self.streams_lost = 0  # the supervisor's: streams found dead or silent, and reopened
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
        # Steps the bridge undid by resampling instead (``playback: push``: a one-block step).
        self.slewed = 0

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

    def as_dict(self) -> dict[str, float]:
        return {"total": round(self.total, 2), **{k: round(v, 2) for k, v in asdict(self).items()}}

    def __str__(self) -> str:
        return (f"{self.total:.1f} ms = {self.algorithmic:.1f} algorithmic + {self.input:.1f} input "
                f"+ {self.buffer:.1f} buffer + {self.output:.1f} output")


@dataclass(frozen=True)
class Snapshot:
    """One report's worth of figures: engine times of a stretch of blocks, counters since the start."""

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
    callback_errors: int
    gaps: int
    lost_ms: float
    nonfinite: int  # input samples that were NaN/Inf and became 0 (the engine's count)
    resets: int  # model state resets after a non-finite output or state (the engine's)
    streams_lost: int
    latency: Optional[Latency]  # None while no stream is open
    dropped: int = 0  # whole blocks the bridge dropped or repeated when it re-centred
    inserted: int = 0
    timed: int = 0  # blocks the engine times are of (the ring keeps the last `BlockStats.size`)
    slewed: int = 0  # one-block steps the bridge resampled away (playback: push)

    @property
    def budget_share(self) -> float:
        return self.mean_ms / BUDGET_MS

    @property
    def xruns(self) -> int:
        return self.input_overflows + self.output_underflows

    def causes(self, more: Sequence[str] = ()) -> list[str]:
        """Why this run is not clean, one named cause each (``more``: the supervisor's own); empty when it is."""
        named = [
            (self.xruns, f"xruns (input overflow {self.input_overflows}, output underflow {self.output_underflows})"),
            (self.gaps, f"lost audio ({self.lost_ms:.0f} ms in {self.gaps} gaps)"),
            (self.missed, f"deadline misses {self.missed}"),
            # Whole blocks dropped or repeated are audio lost or doubled, re-centring or not.
            (self.resyncs + self.dropped + self.inserted,
             f"buffer re-centred {self.resyncs} times{self._blocks_moved()}"),
            # A one-block step resampled away (playback: push): a cycle one side lost, or two clocks' drift,
            # which push cannot tell apart; either way the audio was not carried through at one delay.
            (self.slewed, f"delay steps slewed back {self.slewed} (a cycle lost, or the clocks' drift)"),
            (self.late, f"late blocks {self.late}"),
            (self.callback_errors, f"callback errors {self.callback_errors}"),
            (self.nonfinite, f"non-finite input samples {self.nonfinite}"),
            (self.resets, f"model state resets {self.resets}"),
            (self.streams_lost, f"audio stream lost {self.streams_lost} times"),
        ]
        return [text for count, text in named if count] + list(more) + ([] if self.blocks else
                                                                       ["no audio was processed"])

    def _blocks_moved(self) -> str:
        return f" (dropped {self.dropped}, inserted {self.inserted} blocks)" if self.dropped or self.inserted else ""

    def _slews(self) -> str:
        return f", steps slewed back {self.slewed}" if self.slewed else ""

    def line(self) -> str:
        """The ``--measure`` line: this second's engine times, the run's counters."""
        latency = str(self.latency) if self.latency is not None else "no stream open"
        return (f"[{self.seconds:6.1f} s] engine {self.mean_ms:.3f} ms/block (p99 {self.p99_ms:.3f}, "
                f"max {self.max_ms:.3f}) = {100 * self.budget_share:.1f}% of 8 ms | xruns in "
                f"{self.input_overflows} out {self.output_underflows} | misses {self.missed} | "
                f"re-centred {self.resyncs}{self._blocks_moved()}{self._slews()} | "
                f"gaps {self.gaps} ({self.lost_ms:.0f} ms) | "
                f"late {self.late} | "
                f"errors {self.callback_errors} | non-finite {self.nonfinite} | resets {self.resets} | "
                f"lost {self.streams_lost} | latency {latency}")

    def status(self, mode: str, model: str) -> str:
        """systemd's STATUS= line: short, the figures that say whether audio is clean."""
        latency = f"{self.latency.total:.0f} ms" if self.latency is not None else "-"
        return (f"{mode} {model}: {self.mean_ms:.2f} ms/block, xruns {self.xruns}, misses {self.missed}, "
                f"gaps {self.gaps}, errors {self.callback_errors}, resets {self.resets}, latency {latency}")

    def summary(self, mode: str, model: str, more: Sequence[str] = (), notes: Sequence[str] = ()) -> list[str]:
        """The ``--measure`` summary lines; the last is ``result: OK`` or ``result: FAIL: <causes>``.

        ``more``: the supervisor's own causes; ``notes``: lines other parts add (the alignment).
        """
        causes = self.causes(more)
        timed = "" if self.timed >= self.blocks else f" (the last {self.timed})"
        return [
            f"summary: {self.seconds:.1f} s, {self.blocks} blocks, mode {mode}, model {model}",
            f"  engine per block{timed}: mean {self.mean_ms:.3f} ms, p99 {self.p99_ms:.3f} ms, "
            f"max {self.max_ms:.3f} ms"
            f" ({100 * self.budget_share:.1f}% of the 8 ms budget; {self.late} blocks over it)",
            f"  xruns: input overflow {self.input_overflows}, output underflow {self.output_underflows}; "
            f"deadline misses {self.missed}; "
            f"buffer re-centred {self.resyncs} times{self._blocks_moved()}{self._slews()}",
            f"  lost audio: {self.gaps} gaps, {self.lost_ms:.0f} ms; audio stream lost {self.streams_lost} times",
            f"  callback errors {self.callback_errors}; non-finite input samples {self.nonfinite}; "
            f"model state resets {self.resets}",
            f"  latency: {self.latency if self.latency is not None else 'no stream open at the end'}",
            *(f"  {note}" for note in notes),
            "  result: " + ("FAIL: " + "; ".join(causes) if causes else "OK"),
        ]

    def as_dict(self) -> dict[str, Any]:
        """The figures for the state file (JSON-ready)."""
        return {
            "blocks": self.blocks,
            "engine": {"mean_ms": round(self.mean_ms, 4), "p99_ms": round(self.p99_ms, 4),
                       "max_ms": round(self.max_ms, 4), "budget_share": round(self.budget_share, 4)},
            "xruns": {"input": self.input_overflows, "output": self.output_underflows},
            "misses": self.missed, "resyncs": self.resyncs,
            "dropped_blocks": self.dropped, "inserted_blocks": self.inserted, "slewed_steps": self.slewed,
            "gaps": self.gaps, "lost_ms": round(self.lost_ms, 1),
            "late": self.late, "callback_errors": self.callback_errors, "nonfinite": self.nonfinite,
            "resets": self.resets, "streams_lost": self.streams_lost,
            "latency_ms": self.latency.as_dict() if self.latency is not None else None,
        }


def summarize(times_ms: np.ndarray) -> tuple[float, float, float]:
    if len(times_ms) == 0:
        return 0.0, 0.0, 0.0
    return float(times_ms.mean()), float(np.percentile(times_ms, 99)), float(times_ms.max())


def take(stats: BlockStats, seconds: float, since: int, latency: Optional[Latency],
         nonfinite: int = 0, resets: int = 0) -> Snapshot:
    """A `Snapshot` of ``stats``: engine times of blocks ``since`` onwards, all counters."""
    times = stats.times_since(since)
    mean, p99, mx = summarize(times)
    return Snapshot(seconds, stats.blocks, mean, p99, mx, stats.input_overflows, stats.output_underflows,
                    stats.missed, stats.resyncs, stats.late, stats.callback_errors, stats.gaps,
                    1000.0 * stats.gap_samples / RATE, nonfinite, resets, stats.streams_lost, latency,
                    # The bridge's block re-centring counters (getattr: not in every BlockStats yet).
                    int(getattr(stats, "dropped", 0)), int(getattr(stats, "inserted", 0)), len(times),
                    int(getattr(stats, "slewed", 0)))


class Timeline:
    """Per-second rows for ``--plot``, preallocated: (seconds, engine mean/max ms, buffer ms, counters).

    After ``capacity`` rows the oldest are overwritten, so a long run plots its
    last ``capacity`` seconds.
    """

    COLUMNS = ("seconds", "mean_ms", "max_ms", "buffer_ms", "xruns", "misses", "lost_ms", "ref_delay_ms")

    def __init__(self, capacity: int = 3600) -> None:
        self.rows = np.full((capacity, len(self.COLUMNS)), np.nan)
        self.count = 0

    def add(self, snap: Snapshot, ref_delay_ms: Optional[float] = None) -> None:
        buffer = snap.latency.buffer if snap.latency is not None else math.nan
        row = self.rows[self.count % len(self.rows)]
        row[:] = (snap.seconds, snap.mean_ms, snap.max_ms, buffer, snap.xruns, snap.missed, snap.lost_ms,
                  math.nan if ref_delay_ms is None else ref_delay_ms)
        self.count += 1

    def columns(self) -> dict[str, np.ndarray]:
        """The rows so far, oldest first, as one array per column."""
        n = min(self.count, len(self.rows))
        order = (np.arange(self.count - n, self.count)) % len(self.rows)
        data = self.rows[order]
        return {name: data[:, i] for i, name in enumerate(self.COLUMNS)}
