"""Pipelined models: the second half of each hop on a worker thread.

A hop processor whose two halves alternate on two threads: for block t the
calling thread runs the first half (window, FFTs, model 1; for ``aec+ns``
the whole AEC stage) while the worker still runs, or has run, the second
half of block t−1 (model 2; for ``aec+ns`` the whole NS stage).  Each
``invoke()`` releases the GIL (TF-Lite's Python ``Interpreter.invoke``
documents it), so the halves overlap; the call returns
without waiting for block t's second half, whose output is written by the
next call.  The output is the sequential processor's, delayed by exactly
one hop (``delay`` grows by 128), bit for bit.

Hand-off: two ``threading.Lock`` objects used as binary semaphores (``go``
held while the worker has nothing to do, ``done`` held while a job is in
flight).  A lock's acquire and release are single C calls that allocate
nothing; ``bench/handoff.py`` compares them with the alternatives.  On the
hop the caller blocks only while the worker's job for the previous block
is still running, which in real time (one call every 8 ms) is never the
case unless the second half takes longer than a hop.

The worker takes the scheduling policy and priority of the thread that
drives the hops (the audio callback's SCHED_FIFO, say) when the first block
comes, so that its half is not preempted by the load the caller is
protected from.  The worker thread lives as long as the processor: `close`
stops and joins it (so does garbage collection of an unclosed processor,
but that may happen on any thread: close it); `reset` waits for the job in
flight and clears the history, keeping the one thread.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Callable, Optional

import numpy as np

from .constants import BUDGET_NS, SHIFT
from .engine import _DTLN, Chain
from .hop import HopProcessor, Wrapper

#: ``pipeline: auto`` (and ``bench --paced``'s advice) pipelines when the median paced
#: sequential block takes more than this share of the 8 ms budget: below it,
#: a whole block fits in half a hop and the thread hand-off buys nothing.
PIPELINE_ABOVE = 0.5
#: Blocks ``pipeline: auto`` times at start-up, one per 8 ms (about 0.3 s).
PROBE_BLOCKS = 40

Front = Callable[[np.ndarray, Optional[np.ndarray]], None]


class _Worker:
    """One daemon thread that runs ``job`` each time ``go`` is released, then releases ``done``."""

    def __init__(self, job: Callable[[], object], name: str) -> None:
        self.job = job
        self.go = threading.Lock()
        self.go.acquire()  # held: nothing to do yet
        self.done = threading.Lock()  # free: no job in flight
        self.stopping = False
        self.error: Optional[BaseException] = None
        #: the native id of the thread that drives the hops, once known
        self.caller = 0
        #: why the worker could not take the caller's scheduling, if it could not
        self.sched_error: Optional[str] = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        wait, finished, job = self.go.acquire, self.done.release, self.job
        adopted = 0
        while True:
            wait()
            if self.stopping:
                return
            if self.caller != adopted:
                adopted = self.caller
                self._adopt_scheduling(adopted)
            try:
                job()
            except BaseException as exc:  # handed to the caller's next hop, which raises it
                self.error = exc
            finished()

    def _adopt_scheduling(self, tid: int) -> None:
        """Run at the caller's policy and priority (e.g. the audio callback's SCHED_FIFO).

        The worker's half is on the caller's deadline: at a lower priority
        it would be preempted by the very load the caller is protected from.
        """
        try:
            os.sched_setscheduler(0, os.sched_getscheduler(tid), os.sched_getparam(tid))
            self.sched_error = None
        except OSError as exc:
            self.sched_error = exc.strerror or str(exc)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.done.acquire()  # the job in flight, if any, has finished
        self.stopping = True
        self.go.release()
        self.thread.join()
        self.done.release()


class Pipelined(Wrapper):
    """``inner`` split in two halves that run on two threads; see the module docstring."""

    def __init__(self, inner: HopProcessor, front: Front, handover: Callable[[], None],
                 job: Callable[[], object], finish: Callable[[np.ndarray], None]) -> None:
        super().__init__(inner)
        self.delay = inner.delay + SHIFT
        self._front, self._handover, self._finish = front, handover, finish
        self._worker = _Worker(job, f"dtlnd-{inner.label}")
        self._wait, self._go = self._worker.done.acquire, self._worker.go.release
        self._primed = False
        self._closer = weakref.finalize(self, self._worker.stop)

    @property
    def worker(self) -> threading.Thread:
        return self._worker.thread

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
        """First half of this block, then (once the worker is idle) the previous block's output."""
        self._front(mic, far)
        self._wait()
        if self._worker.error is not None:
            exc, self._worker.error = self._worker.error, None
            self._worker.done.release()
            raise exc
        if self._primed:
            self._finish(out)
        else:  # the first block has no predecessor: one hop of silence
            out.fill(0.0)
            self._primed = True
            self._worker.caller = threading.get_native_id()  # the worker copies its scheduling
        self._handover()
        self._go()

    def sync(self) -> None:
        """Wait until the job in flight, if any, has finished (not for the real-time path)."""
        with self._worker.done:
            pass

    def reset(self) -> None:
        """Wait for the job in flight, then forget all history (the worker stays)."""
        with self._worker.done:
            self.inner.reset()
            self._primed = False

    def close(self) -> None:
        """Stop and join the worker thread; the processor is unusable afterwards."""
        self._closer()
        self.inner.close()


def pipelined(proc: HopProcessor) -> Pipelined:
    """A single stage split after model 1, or ``aec+ns`` split between its stages."""
    if isinstance(proc, _DTLN):
        front, to_model_2, invoke2, finish = proc.parts
        return Pipelined(proc, front, to_model_2, invoke2, finish)
    if isinstance(proc, Chain):
        first, second = proc.stages
        mid, mid_next = np.zeros(SHIFT, np.float32), np.zeros(SHIFT, np.float32)
        done = np.zeros(SHIFT, np.float32)
        hop1, hop2, copyto = first.process_hop, second.process_hop, np.copyto
        return Pipelined(proc, lambda mic, far: hop1(mic, far, mid), lambda: copyto(mid_next, mid),
                         lambda: hop2(mid_next, None, done), lambda out: copyto(out, done))
    raise TypeError(f"cannot pipeline a {type(proc).__name__}")


def paced_share(proc: HopProcessor, blocks: int = PROBE_BLOCKS) -> float:
    """Median time of ``blocks`` hops of low noise, one every 8 ms, as a share of the budget.

    Run at start-up for ``pipeline: auto`` (never on the audio path); the
    processor is reset afterwards.
    """
    rng = np.random.default_rng(0)
    mic = (0.01 * rng.standard_normal((blocks, SHIFT))).astype(np.float32)
    far = mic[::-1].copy() if proc.channels == 2 else None
    out = np.zeros(SHIFT, np.float32)
    times = np.zeros(blocks, np.int64)
    clock = time.perf_counter_ns
    due = clock()
    for i in range(blocks):
        due += BUDGET_NS
        time.sleep(max(0, due - clock()) / 1e9)
        t0 = clock()
        proc.process_hop(mic[i], None if far is None else far[i], out)
        times[i] = clock() - t0
    proc.reset()
    return float(np.median(times[blocks // 4:])) / BUDGET_NS  # the first blocks warm caches up
