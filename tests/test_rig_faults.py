"""Injected faults on the rig: lost time is counted, latency comes back, the audio is still exact.

SIGSTOP stops the whole daemon (its JACK client threads too), so the input
time it sleeps through never arrives and PortAudio flags nothing: only the
daemon's own clock check (``LostTime``) can tell.  A CPU hog and a stopped
loopback consumer must cost nothing at all.  Between hiccups the loopback
carries exactly what ``dtlnd process`` writes for the same input, and the
mic-to-loopback delay one second after each hiccup is within 10 ms of the
delay before the first one.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_util import read
from rig import (
    DAEMON_CLIENTS,
    RATE,
    Proc,
    Recorder,
    Rig,
    daemon,
    exact_at,
    kill_leftovers,
    require_rig,
    summary_field,
    write_raw,
)

SOURCES = ("DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav", "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_mic.wav",
           "airconditioning.wav", "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_lpb.wav",
           "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_lpb.wav")
OUT = ("--output", "rig_loop_play", "--output-format", "FLOAT_LE")
MODEL = "dtln_ns_float"


@pytest.fixture
def own_rig(audio_dir: Path, tmp_path: Path):
    """A rig for one test: a JACK client stopped with SIGSTOP can leave the server unable to list PCMs."""
    r = Rig(require_rig(audio_dir.parent), tmp_path, "h")
    r.start()
    try:
        yield r
    finally:
        kill_leftovers()
        r.stop()


@pytest.fixture(scope="module")
def speech(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """54 s of distinct recordings with a little noise (no exact zeros) as raw input, and ``process``'s output.

    Distinct, not one file looped: a loop would give the cross-correlation one peak per repetition.
    """
    tmp = tmp_path_factory.mktemp("speech")
    x = np.concatenate([read(audio_dir / name) for name in SOURCES])
    x = (x + np.random.default_rng(1).standard_normal(len(x)) * 1e-4).astype(np.float32)
    raw = write_raw(tmp / "speech.raw", x)
    wav, offline = tmp / "speech.wav", tmp / "offline.wav"
    sf.write(wav, x, RATE, subtype="FLOAT")
    r = subprocess.run([sys.executable, "-m", "dtlnd", "process", str(wav), str(offline), "--model", MODEL,
                        "--subtype", "FLOAT"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return raw, read(offline)


def hog(seconds: float) -> list[subprocess.Popen]:
    """Two busy processes (this VM has two vCPUs) for ``seconds``."""
    code = f"import time\nt = time.monotonic() + {seconds}\nwhile time.monotonic() < t: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]


def test_three_stalls_are_lost_time_and_the_audio_comes_back(own_rig, speech, tmp_path):
    """Three 200 ms SIGSTOPs during ``run --measure --duration 10``: exit 1, gaps named, exact audio after."""
    rig = own_rig
    raw, ref = speech
    rec = Recorder(rig, tmp_path / "loop.raw")
    time.sleep(0.3)
    d = daemon(rig, "--input", "rig_file_mic_in", "--model", MODEL, *OUT, "--measure", "--duration", "10",
               env=rig.with_env(RIG_IN_FILE=str(raw)))
    d.wait_for("audio flowing")
    time.sleep(2.0)
    stalls = []
    for _ in range(3):
        t = d.signal(signal.SIGSTOP)
        time.sleep(0.2)
        d.signal(signal.SIGCONT)
        stalls.append((t, time.monotonic()))
        time.sleep(1.5)
    status = d.wait(30)
    time.sleep(0.2)
    y = rec.stop()[:, 0]
    assert "Traceback" not in d.stderr, d.stderr
    assert status == 1, d.stdout
    gaps, ms = summary_field(d.stdout, r"^\s+lost audio: (\d+) gaps, (\d+) ms")
    assert gaps == 3 and 3 * 150 <= ms <= 3 * 300, d.stdout
    assert "result: FAIL" in d.stdout
    # After the last stall the loopback plays exactly what `process` wrote.
    t_rec = rec.started
    lo = int((stalls[-1][1] + 0.5 - t_rec) * RATE)
    hi = lo + RATE
    assert hi < len(y), f"recording ends {len(y) / RATE:.1f} s"
    _, exact = exact_at(y, ref, lo, hi)
    assert exact, "the audio after the stalls is not the offline output"


HICCUPS = {
    "sigstop": lambda d, c: (d.signal(signal.SIGSTOP), time.sleep(0.3), d.signal(signal.SIGCONT)),
    "short_sigstops": lambda d, c: [(d.signal(signal.SIGSTOP), time.sleep(0.05), d.signal(signal.SIGCONT),
                                     time.sleep(0.2)) for _ in range(3)],
    "cpu_hog": lambda d, c: [p.wait(10) for p in hog(2.0)],
    "consumer_stopped": lambda d, c: (c.p.send_signal(signal.SIGSTOP), time.sleep(0.5),
                                      c.p.send_signal(signal.SIGCONT)),
}


def finish(d: Proc, timeout: float = 30) -> int:
    """The exit status of a ``--duration`` run; its output in the failure if it does not end."""
    try:
        return d.wait(timeout)
    except subprocess.TimeoutExpired:
        d.kill()
        raise AssertionError(f"dtlnd did not end within {timeout} s of its duration:\n{d.stderr}\n{d.stdout}") from None


def buffer_ms(d: Proc) -> list[tuple[float, float]]:
    """(time, buffer ms) of each ``--measure`` line."""
    return [(t, float(m.group(1))) for t, line in d.lines(r"\+ ([\d.]+) buffer", stream="out")
            if (m := re.search(r"\+ ([\d.]+) buffer", line))]


KNOWN = pytest.mark.xfail(reason="the SIGSEGV at exit after a close blocked in libjack is gone (devices."
                           "exit_now_if_wedged), but 1 of 12 runs here still failed, cause not found",
                           strict=False)


ATTEMPTS = 3  # runs until one in which jackd's own graph kept time


@dataclass
class HiccupRun:
    """One ``run --measure --duration 16`` with two hiccups 3 s apart, as recorded on the loopback."""

    daemon: Proc
    status: int
    loop: np.ndarray  # the loopback's samples
    rec_started: float  # monotonic time of the recording's start
    flowing: float  # monotonic time of "audio flowing"
    marks: list[tuple[float, float]]  # (start, end) of each hiccup
    late: list[str]  # JACK clients jackd found unfinished during the run, other than the ones stopped


def run_with_hiccups(rig: Rig, raw: Path, kind: str, folder: Path) -> HiccupRun:
    folder.mkdir()
    mark = rig.log_size()
    consumer = Recorder(rig, folder / "consumer.raw", pcm="consumer_loop_rec")  # a second consumer, to stop
    rec = Recorder(rig, folder / "loop.raw")
    time.sleep(0.3)
    d = daemon(rig, "--input", "rig_file_mic_in", "--model", MODEL, *OUT, "--measure", "--duration", "16",
               env=rig.with_env(RIG_IN_FILE=str(raw)))
    d.wait_for("audio flowing")
    t_flow = d.lines("audio flowing")[0][0]
    time.sleep(2.0)
    marks = []
    for _ in range(2):
        t = time.monotonic()
        HICCUPS[kind](d, consumer)
        marks.append((t, time.monotonic()))
        time.sleep(3.0)
    status = finish(d)
    y = rec.stop()[:, 0]
    consumer.stop()
    # The clients the hiccup itself stops are late by design.
    stopped = DAEMON_CLIENTS if "sigstop" in kind else ("loop_consumer",) if kind == "consumer_stopped" else ()
    late = [c for c in rig.late_clients(mark) if not c.startswith(stopped)]
    return HiccupRun(d, status, y, rec.started, t_flow, marks, late)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=KNOWN) if k == "sigstop" else k for k in HICCUPS])
def test_after_a_hiccup_latency_is_back_within_a_second_and_exact_between(own_rig, speech, tmp_path, kind):
    """Two hiccups 3 s apart, file-fed input: each stretch between them is ``process`` output exactly,
    and the buffer the daemon reports a second after each is within 10 ms of the one before.

    A CPU hog and a stopped loopback consumer must cost no input at all.  A run in which jackd found a
    client unfinished (see `Rig.late_clients`) is run again: the rig, not the daemon, damaged its audio.
    """
    rig = own_rig
    raw, ref = speech
    for attempt in range(ATTEMPTS):
        run = run_with_hiccups(rig, raw, kind, tmp_path / f"run{attempt}")
        if not run.late:
            break
    d = run.daemon
    assert "Traceback" not in d.stderr, d.stderr
    assert run.status in (0, 1), d.stderr
    marks = run.marks
    edges = [run.flowing + 0.5] + [t for mark in marks for t in mark] + [marks[-1][1] + 2.5]
    stretches = [(edges[i] + (1.0 if i else 0.0), edges[i + 1] - 0.2) for i in range(0, len(edges), 2)]
    for a, b in stretches:
        lo, hi = int((a - run.rec_started) * RATE), int((b - run.rec_started) * RATE)
        assert hi - lo > RATE // 2, (a, b)
        _, exact = exact_at(run.loop, ref, lo, hi)
        # Under load a hiccup may cost more than it should; then the daemon must say so itself.
        admitted = "result: OK" not in d.stdout and not re.search(r"xruns: input overflow 0, output underflow 0; "
                                                                  r"deadline misses 0;", d.stdout)
        if not exact and run.late:
            warnings.warn(f"{kind}: exactness not checked: in all {ATTEMPTS} runs jackd found clients "
                          f"unfinished ({', '.join(sorted(set(run.late)))})", stacklevel=1)
            break
        assert exact or admitted, (f"{kind}: {a - run.rec_started:.1f}..{b - run.rec_started:.1f} s is not the "
                                   f"offline output\n{d.stdout}\n{d.stderr}")
    reports = buffer_ms(d)
    before = [ms for t, ms in reports if t < marks[0][0]]
    assert before, d.stdout
    for _, end in marks:
        after = [ms for t, ms in reports if end + 1.0 <= t < end + 2.5]
        assert after and all(abs(ms - before[-1]) <= 10 for ms in after), \
            f"{kind}: buffer {before[-1]} ms before, {after} ms a second after\n{d.stdout}"
    gaps, _ = summary_field(d.stdout, r"^\s+lost audio: (\d+) gaps, (\d+) ms")
    if kind in ("cpu_hog", "consumer_stopped"):
        assert gaps == 0, f"{kind}: lost input\n{d.stdout}"
    else:
        assert gaps >= 1, f"{kind}: the stall was not counted\n{d.stdout}"
