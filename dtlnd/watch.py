"""The supervisor's two small clocks: when to retry an open (`Backoff`), whether audio still moves (`StallWatch`)."""

from __future__ import annotations

from typing import Optional

from .measure import BlockStats

STALL = 1.5  # seconds without callbacks before a stream counts as dead
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)


class Backoff:
    """When to try opening again: `BACKOFF` steps, the last repeating."""

    def __init__(self) -> None:
        self.attempt = 0
        self.next_try = 0.0
        self.since = 0.0

    def start(self, now: float) -> None:
        self.attempt, self.since, self.next_try = 0, now, now + BACKOFF[0]

    def due(self, now: float) -> bool:
        return now >= self.next_try

    def failed(self, now: float) -> None:
        self.attempt += 1
        self.next_try = now + BACKOFF[min(self.attempt, len(BACKOFF) - 1)]


class StallWatch:
    """Whether both directions (input blocks, output callbacks) keep moving.

    Both must move: a wedged output under a live input is a stall too.  The
    counts at ``restart`` are the baseline, so "flowing" means callbacks ran
    after the (re)open, not before it.
    """

    def __init__(self, stats: BlockStats) -> None:
        self.stats = stats
        self.restart(0.0)

    def _counts(self) -> tuple[int, int]:
        return self.stats.blocks, self.stats.outputs

    def restart(self, now: float) -> None:
        self.base = self.seen = self.pinged = self._counts()
        self.moved = [now, now]

    def update(self, now: float) -> None:
        counts = self._counts()
        self.moved = [now if c != old else t for c, old, t in zip(counts, self.seen, self.moved)]
        self.seen = counts

    @property
    def started(self) -> bool:
        """Both callbacks ran since ``restart``."""
        return all(c > b for c, b in zip(self.seen, self.base))

    def stalled(self, now: float, output_blocked: bool = False) -> Optional[str]:
        """Why the audio counts as lost, or None; names the side only when the other moved lately.

        ``output_blocked``: the pipeline says its output write holds both sides up (`dtlnd.push`).
        """
        quiet = [now - t for t in self.moved]
        if max(quiet) <= STALL:
            return None
        if output_blocked:
            side = "output "
        else:
            side = "" if min(quiet) > STALL / 2 else ("input " if quiet[0] > quiet[1] else "output ")
        return f"no {side}audio for {STALL:.1f} s"

    def moved_since_ping(self) -> bool:
        return all(c != p for c, p in zip(self.seen, self.pinged))
