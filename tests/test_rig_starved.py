"""Real CPU starvation of the daemon on the rig: every ``--measure`` counter it drives is counted and named.

A hog pinned to CPU 0 runs SCHED_FIFO above the audio threads' priority;
jackd and everything not starved run on the other CPU and keep time.

* The whole daemon on CPU 0, hogged in 20 ms bursts 2 ms apart for 1.5 s
  (aec+ns, the slowest chain): a burst that lands while a block is being
  processed stretches it past the 8 ms budget, so late blocks are counted.
* With ``playback: callback``, only the input callback's thread (the
  writer) stalled 3 x 0.3 s: input overflows, deadline misses (the reader
  finds samples missing) and lost audio.  Only the output callback's thread
  (the reader): output underflows and whole blocks dropped; stalled over a
  second (past the bridge's ring): a re-centring.
* With ``playback: push`` the one audio thread stalled 3 x 0.3 s: input
  overflows, output underflows (the device's buffer ran dry) and lost audio.

Whatever the daemon counts must be on the result line with its count, and
the run exits 1.  Needs root or CAP_SYS_NICE for the hog's priority, and
two CPUs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rig import RATE, Proc, daemon, write_raw
from test_rig_faults import finish, own_rig  # noqa: F401  (own_rig: a fixture, shared with the fault tests)


@pytest.fixture
def rig(own_rig):  # noqa: F811  (the imported fixture, taken as an argument)
    """A fresh rig per test, as the fault tests use (a stopped or starved JACK client can wedge a shared one)."""
    return own_rig

MODE, MODEL = "aec+ns", "dtln_aec_256_quant"  # the slowest chain: a block takes a good share of 8 ms
HOG_PRIORITY = 40  # above the audio threads' (20 by default, 37 where the test sets it)
# A busy loop on CPU 0 at SCHED_FIFO HOG_PRIORITY: BURSTS bursts of ON seconds, OFF seconds apart.
HOG = """
import os, sys, time
os.sched_setaffinity(0, {0})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(sys.argv[1])))
for _ in range(int(sys.argv[2])):
    t = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < t:
        pass
    time.sleep(float(sys.argv[4]))
"""


def hog(bursts: int, on: float, off: float) -> None:
    p = subprocess.Popen([sys.executable, "-c", HOG, str(HOG_PRIORITY), str(bursts), str(on), str(off)])
    assert p.wait(bursts * (on + off) + 10) == 0, "the hog failed"


def pin(pid: int, cpu: int) -> int:
    """Pin every thread of process ``pid`` to ``cpu``; how many threads there were."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    for tid in tids:
        os.sched_setaffinity(tid, {cpu})
    return len(tids)


def require_fifo() -> None:
    """Skip unless the hog can run: two CPUs and SCHED_FIFO (root or CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pytest.skip("the CPU hog needs SCHED_FIFO (root or CAP_SYS_NICE)")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs: jackd must keep time on the one not starved")


def noise(tmp: Path) -> Path:
    """10 s of two-channel noise (microphone, reference) as the file-fed input."""
    x = np.random.default_rng(3).standard_normal((RATE * 10, 2)).astype(np.float32) * 0.05
    return write_raw(tmp / "noise.raw", x)


SUMMARY = (r"; (?P<late>\d+) blocks over it\)$",
           r"input overflow (?P<overflow>\d+), output underflow (?P<underflow>\d+); "
           r"deadline misses (?P<misses>\d+); buffer re-centred (?P<resyncs>\d+) times",
           r"dropped (?P<dropped>\d+), inserted (?P<inserted>\d+) blocks", r"lost audio: (?P<gaps>\d+) gaps")
# A count in the summary, and the words the result line must then contain.
NAMED = {"late": "late blocks {}", "overflow": "xruns (input overflow {}", "underflow": "output underflow {})",
         "misses": "deadline misses {}", "resyncs": "buffer re-centred {} times", "gaps": "in {} gaps)",
         "dropped": "(dropped {},", "inserted": "inserted {} blocks)"}


def summary_counts(stdout: str) -> dict[str, int]:
    """The summary's counters by name (dropped/inserted: 0 when the summary names none)."""
    counts = {"dropped": 0, "inserted": 0}
    assert "\nsummary: " in stdout, stdout
    summary = stdout[stdout.rindex("\nsummary: "):]  # not the per-second lines before it
    for rx in SUMMARY:
        m = re.search(rx, summary, re.MULTILINE)
        assert m or "dropped" in rx, f"no {rx!r} in the summary:\n{stdout}"
        counts.update({k: int(v) for k, v in (m.groupdict() if m else {}).items()})
    return counts


def assert_named(stdout: str, counts: dict[str, int]) -> None:
    """Every nonzero counter is a cause on the result line, with its count."""
    result = stdout.splitlines()[-1]
    assert result.startswith("  result: FAIL: "), stdout
    for key, words in NAMED.items():
        if counts[key]:
            assert words.format(counts[key]) in result, f"{key} {counts[key]} not named:\n{stdout}"


def test_a_starved_daemon_counts_late_blocks_and_fails(rig, tmp_path):
    """The whole daemon starved in bursts: late blocks, and whatever else it cost, named."""
    require_fifo()
    d = daemon(rig, "--input", "rig_file_aec_in", "--mode", MODE, "--model", MODEL, "--output", "rig_loop_play",
               "--measure", "--duration", "7", env=rig.with_env(RIG_IN_FILE=str(noise(tmp_path))))
    d.wait_for("audio flowing")
    time.sleep(1.5)
    pin(rig.jackd_pid, 1)  # the clock must keep time
    threads = pin(d.pid, 0)
    hog(68, 0.020, 0.002)  # 1.5 s, the daemon left under a tenth of a CPU
    status = finish(d)
    assert "Traceback" not in d.stderr, d.stderr
    assert status == 1, d.stdout
    assert summary_counts(d.stdout)["late"] >= 1, f"{threads} threads starved, no late block:\n{d.stdout}"
    assert_named(d.stdout, summary_counts(d.stdout))


def audio_threads(d: Proc, priority: int) -> list[int]:
    """TIDs of the daemon's threads running SCHED_FIFO at ``priority`` (its stream callbacks), oldest first."""
    found = []
    for t in os.listdir(f"/proc/{d.pid}/task"):
        tid = int(t)
        if os.sched_getscheduler(tid) == os.SCHED_FIFO and os.sched_getparam(tid).sched_priority == priority:
            found.append(tid)
    return sorted(found)


# (playback setting, which callback, bursts, seconds each, what the starvation must be counted as).
STARVED = {
    "writer": ("callback", "input", 3, 0.3, ("overflow", "misses", "gaps")),
    "reader": ("callback", "output", 3, 0.3, ("underflow", "dropped")),
    # Past what the ring holds (16384 samples, 1.02 s), short of the stall watch's 1.5 s (a lost stream).
    "reader_over_a_second": ("callback", "output", 1, 1.25, ("underflow", "resyncs")),
    # playback: push: one audio thread does both; starved, it loses input and lets the playback run dry.
    "push": ("push", "input", 3, 0.3, ("overflow", "underflow", "gaps")),
}


@pytest.mark.parametrize("case", list(STARVED))
def test_one_starved_callback_is_counted_and_named(rig, tmp_path, case):
    """Only one stream callback's thread starved.  With ``playback: callback``: the input (writer) is
    xruns, deadline misses and lost audio; the output (reader) is output underflows and dropped blocks,
    over a second a re-centring.  With ``playback: push`` (one audio thread): xruns both ways and lost audio.

    The callback threads are the only ones at ``--rt-priority 37``; the
    input stream is started last, so its thread is the younger (higher TID).
    """
    playback, side, bursts, seconds, expected = STARVED[case]
    require_fifo()
    d = daemon(rig, "--input", "rig_file_aec_in", "--mode", MODE, "--model", MODEL, "--output", "rig_loop_play",
               "--measure", "--duration", "7", "--rt-priority", "37", "--playback", playback,
               env=rig.with_env(RIG_IN_FILE=str(noise(tmp_path))))
    d.wait_for("audio flowing")
    time.sleep(1.0)
    tids = audio_threads(d, 37)
    assert len(tids) == (2 if playback == "callback" else 1), f"SCHED_FIFO 37 threads: {tids}\n{d.stderr}"
    pin(rig.jackd_pid, 1)  # the clock must keep time
    pin(d.pid, 1)
    os.sched_setaffinity(tids[-1 if side == "input" else 0], {0})
    hog(bursts, seconds, 0.7)
    status = finish(d)
    assert "Traceback" not in d.stderr, d.stderr
    assert status == 1, d.stdout
    counts = summary_counts(d.stdout)
    assert all(counts[k] >= 1 for k in expected), f"{case}: expected {expected} counted\n{d.stdout}"
    assert_named(d.stdout, counts)

