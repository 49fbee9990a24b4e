"""Cost of handing one block to a worker thread and back, for each primitive.

The pipelined engine (dtlnd/pipeline.py) wakes a worker once per 8 ms block
and waits for it once.  This times that round trip alone (the worker does
nothing) for the primitives one could use, in a hot loop and paced at one
round trip every 8 ms (as in real time, where the worker sleeps between
blocks), with the CPU time the process spends per round trip (all threads).
Rounds alternate between primitives so that a busy machine skews all alike.

    python bench/handoff.py [--rounds 6] [--per-round 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

BUDGET_S = 0.008


class LockPair:
    """Two threading.Lock used as binary semaphores (what dtlnd uses)."""

    def __init__(self) -> None:
        self.go, self.done = threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()

    def worker_wait(self) -> None:
        self.go.acquire()

    def worker_done(self) -> None:
        self.done.release()

    def kick(self) -> None:
        self.go.release()

    def wait(self) -> None:
        self.done.acquire()


class SemaphorePair(LockPair):
    def __init__(self) -> None:
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)


class EventPair:
    def __init__(self) -> None:
        self.go, self.done = threading.Event(), threading.Event()

    def worker_wait(self) -> None:
        self.go.wait()
        self.go.clear()

    def worker_done(self) -> None:
        self.done.set()

    def kick(self) -> None:
        self.go.set()

    def wait(self) -> None:
        self.done.wait()
        self.done.clear()


class Spin:
    """A flag polled with time.sleep(0) (which releases the GIL)."""

    def __init__(self) -> None:
        self.state = 0  # 0 idle, 1 go, 2 done

    def worker_wait(self) -> None:
        while self.state != 1:
            time.sleep(0)

    def worker_done(self) -> None:
        self.state = 2

    def kick(self) -> None:
        self.state = 1

    def wait(self) -> None:
        while self.state != 2:
            time.sleep(0)
        self.state = 0


class EventFd:
    def __init__(self) -> None:
        self.go, self.done = os.eventfd(0), os.eventfd(0)

    def worker_wait(self) -> None:
        os.eventfd_read(self.go)

    def worker_done(self) -> None:
        os.eventfd_write(self.done, 1)

    def kick(self) -> None:
        os.eventfd_write(self.go, 1)

    def wait(self) -> None:
        os.eventfd_read(self.done)


class Pipe:
    def __init__(self) -> None:
        self.go_r, self.go_w = os.pipe()
        self.done_r, self.done_w = os.pipe()

    def worker_wait(self) -> None:
        os.read(self.go_r, 1)  # one-byte bytes objects are cached: no allocation

    def worker_done(self) -> None:
        os.write(self.done_w, b"x")

    def kick(self) -> None:
        os.write(self.go_w, b"x")

    def wait(self) -> None:
        os.read(self.done_r, 1)


KINDS = {"Lock pair": LockPair, "Semaphore": SemaphorePair, "Event": EventPair, "spin + sleep(0)": Spin,
         "eventfd": EventFd, "pipe": Pipe}


def run(kind: str, n: int, paced: bool) -> tuple[list[float], float]:
    h = KINDS[kind]()
    stop = [False]

    def worker() -> None:
        while True:
            h.worker_wait()
            if stop[0]:
                return
            h.worker_done()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    times = []
    clock = time.perf_counter
    c0 = time.process_time()
    due = clock()
    for _ in range(n):
        if paced:
            due += BUDGET_S
            time.sleep(max(0.0, due - clock()))
        t0 = clock()
        h.kick()
        h.wait()
        times.append(clock() - t0)
    cpu = time.process_time() - c0
    stop[0] = True
    h.kick()
    t.join()
    return times, cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=300)
    args = ap.parse_args()
    for paced in (False, True):
        per = {k: ([], []) for k in KINDS}
        for _ in range(args.rounds):
            for k in KINDS:
                times, cpu = run(k, args.per_round, paced)
                per[k][0].extend(times)
                per[k][1].append(cpu)
        print(f"\n{'paced, one per 8 ms' if paced else 'hot loop'}: round trip caller -> worker -> caller")
        print(f"{'primitive':<16} {'median us':>10} {'p99 us':>8} {'CPU us per trip':>16}")
        for k, (times, cpus) in per.items():
            times.sort()
            print(f"{k:<16} {1e6 * statistics.median(times):>10.1f} {1e6 * times[int(0.99 * len(times))]:>8.1f} "
                  f"{1e6 * statistics.median(cpus):>16.1f}")


if __name__ == "__main__":
    main()
