"""Injected faults on the rig: lost time is counted, latency comes back, the audio is still exact.

SIGSTOP stops the whole daemon (its JACK client threads too), so the input
time it sleeps through never arrives and PortAudio flags nothing: only the
daemon's own clock check (``LostTime``) can tell.  A CPU hog and a stopped
loopback consumer must cost nothing at all, unless jackd's log shows that
the rig's own clock slipped.  Between hiccups the loopback carries exactly
what ``dtlnd process`` writes for the same input (checked where jackd says
no JACK client was late: `Rig.late_clients`), and the mic-to-loopback delay
one second after each hiccup is within 10 ms of the delay before the first.
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
ATTEMPTS = 3  # runs until one in which jackd's graph kept time where it matters


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
    """Three 200 ms SIGSTOPs during ``run --measure --duration 10``: exit 1, gaps named, exact audio after.

    The exactness is checked on a run in which jackd kept time after the last stall (`Rig.trouble`).
    """
    rig = own_rig
    raw, ref = speech
    for attempt in range(ATTEMPTS):
        log_start = rig.log_size()
        rec = Recorder(rig, tmp_path / f"loop{attempt}.raw")
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
            time.sleep(0.3)
            after = rig.log_size()  # the stopped daemon's clients were late until now, by design
            time.sleep(1.2)
        status = d.wait(30)
        time.sleep(0.2)
        y = rec.stop()[:, 0]
        assert "Traceback" not in d.stderr, d.stderr
        assert status == 1, d.stdout
        gaps, ms = summary_field(d.stdout, r"^\s+lost audio: (\d+) gaps, (\d+) ms")
        # One gap per stall, and one more for each time the rig's own clock slipped (seen once in about
        # 20 runs here: 4 gaps, 607 ms in all).
        slips = rig.clock_slips(log_start)
        assert 3 <= gaps <= 3 + slips and 3 * 150 <= ms <= 3 * 300, f"{slips} clock slips in jackd's log\n{d.stdout}"
        assert "result: FAIL" in d.stdout
        # After the last stall the loopback plays exactly what `process` wrote.
        lo = int((stalls[-1][1] + 0.5 - rec.started) * RATE)
        hi = lo + RATE
        assert hi < len(y), f"recording ends {len(y) / RATE:.1f} s"
        _, exact = exact_at(y, ref, lo, hi)
        trouble = rig.trouble(after)
        if exact or not trouble:
            break
    assert exact, f"the audio after the stalls is not the offline output (jackd: {trouble or 'kept time'})"


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


@dataclass
class HiccupRun:
    """One ``run --measure --duration 16`` with two hiccups 3 s apart, as recorded on the loopback."""

    daemon: Proc
    status: int
    loop: np.ndarray  # the loopback's samples
    stretches: list[tuple[int, int]]  # sample ranges of ``loop`` away from the hiccups
    marks: list[tuple[float, float]]  # monotonic (start, end) of each hiccup
    late: list[str]  # JACK clients jackd found unfinished when they should not have been (`run_with_hiccups`)
    slips: int  # times the rig's clock fell behind during the run (see `Rig.clock_slips`)


def run_with_hiccups(rig: Rig, raw: Path, kind: str, folder: Path) -> HiccupRun:
    """The stretches are found by the recording's length at each moment, not by the clock.

    A late ``arecord`` start, or cycles its JACK client lost, would otherwise move a stretch into a
    hiccup.  Only the jackd log written during the stretches counts: a stopped client, and every
    client downstream of it, is late by design during the hiccup itself.
    """
    folder.mkdir()
    log_start = rig.log_size()
    consumer = Recorder(rig, folder / "consumer.raw")  # a second consumer of the loopback, to stop
    rec = Recorder(rig, folder / "loop.raw", period_us=16000)
    time.sleep(0.3)
    d = daemon(rig, "--input", "rig_file_mic_in", "--model", MODEL, *OUT, "--measure", "--duration", "16",
               env=rig.with_env(RIG_IN_FILE=str(raw)))
    d.wait_for("audio flowing")
    time.sleep(0.5)
    points = [(rec.frames(), rig.log_size())]  # (samples recorded, jackd log size): stretch edges
    marks = []
    for _ in range(2):
        time.sleep(2.0)
        points.append((rec.frames() - RATE // 5, rig.log_size()))
        t = time.monotonic()
        HICCUPS[kind](d, consumer)
        marks.append((t, time.monotonic()))
        time.sleep(1.0)
        points.append((rec.frames() + RATE // 5, rig.log_size()))
    time.sleep(1.5)
    points.append((rec.frames() - RATE // 5, rig.log_size()))
    status = finish(d)
    y = rec.stop()[:, 0]
    consumer.stop()
    edges = list(zip(points[::2], points[1::2]))
    if kind in ("cpu_hog", "consumer_stopped"):
        # The daemon runs on throughout: a late client anywhere in the run, but the stopped consumer
        # (the first rig_loop_rec), is the rig's trouble, and may cost input the daemon rightly counts.
        late = [c for c in rig.late_clients(log_start) if c != "rig_loop_rec"]
    else:  # the stopped daemon's clients, and everything downstream of them, are late in the hiccups
        late = [c for (_, a), (_, b) in edges for c in rig.late_clients(a, b)]
    return HiccupRun(d, status, y, [(a, b) for (a, _), (b, _) in edges], marks, late, rig.clock_slips(log_start))


@pytest.mark.parametrize("kind", list(HICCUPS))
def test_after_a_hiccup_latency_is_back_within_a_second_and_exact_between(own_rig, speech, tmp_path, kind):
    """Two hiccups 3 s apart, file-fed input: each stretch between them is ``process`` output exactly,
    and the buffer the daemon reports a second after each is within 10 ms of the one before.

    A CPU hog and a stopped loopback consumer must cost no input at all, but for the rig's own clock
    slips (`Rig.clock_slips`).  A run in which jackd found a client unfinished during a stretch
    (`Rig.late_clients`) is run again: the rig, not the daemon, damaged its audio.
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
    for lo, hi in run.stretches:
        assert hi - lo > RATE // 2, (lo, hi)
        _, exact = exact_at(run.loop, ref, lo, hi)
        # Under load a hiccup may cost more than it should; then the daemon must say so itself.
        admitted = "result: OK" not in d.stdout and not re.search(r"xruns: input overflow 0, output underflow 0; "
                                                                  r"deadline misses 0;", d.stdout)
        if not exact and run.late:
            warnings.warn(f"{kind}: exactness not checked: in all {ATTEMPTS} runs jackd found clients "
                          f"unfinished ({', '.join(sorted(set(run.late)))})", stacklevel=1)
            break
        assert exact or admitted, (f"{kind}: {lo / RATE:.1f}..{hi / RATE:.1f} s of the recording is not the "
                                   f"offline output\n{d.stdout}\n{d.stderr}")
    marks = run.marks
    reports = buffer_ms(d)
    before = [ms for t, ms in reports if t < marks[0][0]]
    assert before, d.stdout
    for _, end in marks:
        after = [ms for t, ms in reports if end + 1.0 <= t < end + 2.5]
        assert after and all(abs(ms - before[-1]) <= 10 for ms in after), \
            f"{kind}: buffer {before[-1]} ms before, {after} ms a second after\n{d.stdout}"
    gaps, _ = summary_field(d.stdout, r"^\s+lost audio: (\d+) gaps, (\d+) ms")
    if kind in ("cpu_hog", "consumer_stopped"):
        # No input lost, unless the rig's own clock slipped (seen once in 11 runs of the hog here), or
        # jackd found clients late in every attempt.
        assert gaps <= run.slips or run.late, \
            f"{kind}: lost input ({run.slips} clock slips in jackd's log)\n{d.stdout}"
    else:
        assert gaps >= 1, f"{kind}: the stall was not counted\n{d.stdout}"
