"""Live status, truthful figures under injected faults, and ``--plot``, on the audio rig (see tests/rig.py).

The faults are real: the daemon process is stopped with SIGSTOP (as a VM
pause or a scheduler stall would), and the daemon's own figures must say
so; the state file is read by ``dtlnd status`` as a user would.
"""

# ruff: noqa: F811 (the test functions take the imported fixtures as arguments)
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from audio_util import read, snr_db
from rig import RATE, TRIES, Proc, Recorder, Rig, daemon, lag, sound_runs, write_raw
from test_daemon_rig import (  # noqa: F401 (rig, rig_folder, speech_raw: fixtures)
    AIRCON,
    EDGE,
    OUT,
    rig,
    rig_folder,
    run_env,
    speech_raw,
    stop,
)

HOGS = 1  # one spinning process beside the daemon, the rig and whatever else loads this machine
SUMMARY_LOST = re.compile(r"^  lost audio: (\d+) gaps, (\d+) ms;", re.MULTILINE)


def recorded_run(rig: Rig, tmp_path: Path, raw: Path, seconds: int) -> tuple[int, Proc, np.ndarray]:
    """``run --measure`` of NS on ``raw`` fed as the microphone for ``seconds``: (its status, it, the loopback)."""
    rec = Recorder(rig, tmp_path / "loop.raw")
    time.sleep(0.3)
    d = daemon(rig, "--input", "rig_file_mic_in", "--model", "dtln_ns_float", *OUT, "--duration", str(seconds),
               "--measure", env=run_env(rig, raw))
    code = d.wait(60)
    time.sleep(0.3)
    return code, d, rec.stop()[:, 0]


def status(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtlnd", "status", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def test_status_json_shows_blocks_rising_and_no_daemon_fails(rig, speech_raw, tmp_path):
    env = run_env(rig, speech_raw, DTLND_RUNTIME_DIR=str(tmp_path / "run"))
    assert status(env).returncode == 3, "status with nothing running"
    d = daemon(rig, "--input", "rig_file_mic_in", *OUT, env=env)
    d.wait_for("audio flowing")
    time.sleep(1.2)  # the first write comes one second after the start
    first = status(env, "--json")
    time.sleep(2.0)
    second = status(env, "--json")
    text = status(env)
    assert first.returncode == second.returncode == text.returncode == 0, first.stderr + second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    print(f"\nblocks {a['blocks']} -> {b['blocks']} in 2 s; {b['engine']}, rss {b['rss_kib']} KiB, "
          f"cpu {b['cpu_percent']}%\n{text.stdout}")
    # The two files' own clocks: `status` itself takes a while to start on a loaded machine.
    span = b["updated"] - a["updated"]
    rate = (b["blocks"] - a["blocks"]) / span
    assert span >= 1.5 and 100 <= rate <= 150, (a["blocks"], b["blocks"], span)  # 125 blocks a second
    assert b["pid"] == d.pid and b["state"] == "flowing" and b["devices"].startswith("input 'rig_file_mic_in'")
    assert b["latency_ms"]["total"] > 24 and b["rss_kib"] > 10_000
    assert "blocks" in text.stdout and "latency:" in text.stdout
    assert stop(d) == 0, d.stderr
    gone = status(env)
    assert gone.returncode == 3 and gone.stderr.count("\n") == 1, gone.stderr


def test_a_killed_daemon_leaves_a_stale_file(rig, speech_raw, tmp_path):
    env = run_env(rig, speech_raw, DTLND_RUNTIME_DIR=str(tmp_path / "run"))
    d = daemon(rig, "--input", "rig_file_mic_in", *OUT, env=env)
    d.wait_for("audio flowing")
    time.sleep(1.5)
    assert status(env, "--json").returncode == 0
    d.kill()
    r = status(env, "--json")
    assert r.returncode == 1 and "stale" in r.stderr and r.stdout == "", r.stderr


def test_three_stalls_fail_the_run_and_name_the_lost_audio(rig, speech_raw, tmp_path):
    """SIGSTOP/SIGCONT the daemon for 200 ms three times: exit 1, lost audio counted; sound after the last."""
    env = run_env(rig, speech_raw, DTLND_RUNTIME_DIR=str(tmp_path / "run"))
    rec = Recorder(rig, tmp_path / "loop.raw")
    time.sleep(0.3)
    d = daemon(rig, "--input", "rig_file_mic_in", *OUT, "--measure", "--duration", "8", env=env)
    d.wait_for("audio flowing")
    stalls = []
    for _ in range(3):
        time.sleep(1.3)
        t = d.signal(signal.SIGSTOP)
        time.sleep(0.2)
        stalls.append((t, d.signal(signal.SIGCONT)))
    t_last = stalls[-1][1]
    assert d.wait(30) == 1, d.stdout + d.stderr
    y = rec.stop()[:, 0]
    print("\n" + "\n".join(line for line in d.stdout.splitlines() if not line.startswith("[")))
    assert "Traceback" not in d.stderr
    m = SUMMARY_LOST.search(d.stdout)
    assert m, d.stdout
    gaps, lost_ms = int(m.group(1)), int(m.group(2))
    # Each stall lost ~200 ms; detection works per ~0.26 s window, so allow for a stall split in two.
    assert 3 <= gaps <= 6 and 450 <= lost_ms <= 900, (gaps, lost_ms)
    result = d.stdout.strip().splitlines()[-1]
    assert result.startswith("  result: FAIL: ") and "lost audio (" in result, result
    # The --measure lines carry it as it happens, not only the summary.
    assert any("gaps 3 (" in line for line in d.stdout.splitlines() if line.startswith("[")), d.stdout
    # Audio flows again after the last stall: sound in the loopback from then to the end.
    runs = sound_runs(y)
    assert runs, "the loopback recording is all zeros"
    after = int((t_last - rec.started + 0.3) * RATE)
    tail = sum(max(0, e - max(s, after)) for s, e in runs)
    assert tail > 1.5 * RATE, f"only {tail / RATE:.2f} s of sound after the last stall"


def test_plot_on_the_rig(rig, speech_raw, tmp_path):
    env = run_env(rig, speech_raw)
    png = tmp_path / "run.png"
    d = daemon(rig, "--input", "rig_file_mic_in", *OUT, "--measure", "--duration", "6", "--plot", png, env=env)
    d.wait_for("audio flowing")
    time.sleep(2.5)
    d.signal(signal.SIGSTOP)
    time.sleep(0.3)
    d.signal(signal.SIGCONT)
    try:
        d.wait(30)
    except subprocess.TimeoutExpired:
        d.kill()
        raise AssertionError(f"no exit 30 s after a 6 s run:\n{d.stdout}\n{d.stderr}") from None
    assert "Traceback" not in d.stderr, d.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = np.frombuffer(data[16:24], ">u4")
    assert width >= 800 and height >= 500, (width, height)
    keep = Path("/tmp") / "dtlnd-run-plot.png"
    keep.write_bytes(data)
    print(f"\nplot: {keep}")


def test_under_a_cpu_hog_the_output_is_exact_or_the_figures_say_why(rig, audio_dir, tmp_path):
    """File-fed NS beside CPU hogs: the loopback equals ``dtlnd process`` sample for sample, or --measure FAILs.

    A run whose audio was damaged while the daemon reported OK is the defect
    this looks for (issue 9: "under load ... reported result: OK"), unless
    jackd itself lost time in it (`Rig.trouble`: a late ``arecord`` or
    loopback client damages the recording after the daemon): such a run is
    tried again, as `until_clean` does.
    """
    x = read(audio_dir / AIRCON)
    raw = write_raw(tmp_path / "in.raw", np.concatenate([x, np.zeros(RATE * 4, np.float32)]))
    offline = tmp_path / "offline.wav"
    r = subprocess.run([sys.executable, "-m", "dtlnd", "process", audio_dir / AIRCON, offline, "--model",
                        "dtln_ns_float", "--subtype", "FLOAT"], env=rig.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = read(offline)
    trouble = ""
    for _ in range(TRIES):
        since = rig.log_size()
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(HOGS)]
        try:
            code, d, y = recorded_run(rig, tmp_path, raw, 4)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        result = d.stdout.strip().splitlines()[-1]
        print("\n" + "\n".join(line for line in d.stdout.splitlines() if not line.startswith("[")))
        assert "Traceback" not in d.stderr and code in (0, 1), d.stderr
        runs = sound_runs(y)
        exact = False
        if runs:
            start, end = runs[0][0], runs[-1][1]
            d_lag = lag(y, ref)
            lo, hi = max(start, d_lag) + EDGE, min(end, d_lag + len(ref)) - EDGE
            exact = hi - lo > 3 * RATE and np.array_equal(y[lo:hi], ref[lo - d_lag:hi - d_lag])
            if not exact and hi > lo:
                print(f"streamed vs offline: SNR {snr_db(ref[lo - d_lag:hi - d_lag], y[lo:hi]):.1f} dB")
        print(f"output exact: {exact}; {result.strip()}")
        if exact or (code == 1 and result.startswith("  result: FAIL: ")):
            return
        trouble = rig.trouble(since)
        assert trouble, f"damaged audio, yet {result!r}, and jackd kept time"
    pytest.skip(f"jackd itself lost time in all {TRIES} runs (the last: {trouble}): no run to judge")


def test_a_nan_burst_is_counted_and_fails_the_run_and_sound_returns(rig, audio_dir, tmp_path):
    """100 ms of NaN/Inf in file-fed input: the output stays finite, the run FAILs naming non-finite input."""
    from dtlnd import engine

    if not hasattr(engine.build("ns", "dtln_ns_float"), "nonfinite"):
        pytest.skip("this engine has no non-finite guard (the engine branch is not merged)")
    x = np.tile(read(audio_dir / AIRCON), 2)
    burst = slice(2 * RATE, 2 * RATE + RATE // 10)
    x[burst] = np.nan
    x[burst.start::7][:200] = np.inf
    raw = write_raw(tmp_path / "in.raw", np.concatenate([x, np.zeros(RATE * 4, np.float32)]))
    code, d, y = recorded_run(rig, tmp_path, raw, 6)
    print("\n" + "\n".join(line for line in d.stdout.splitlines() if not line.startswith("[")))
    assert code == 1, d.stdout + d.stderr
    assert np.isfinite(y).all(), "non-finite samples reached the loopback"
    result = d.stdout.strip().splitlines()[-1]
    m = re.search(r"non-finite input samples (\d+)", result)
    assert m and int(m.group(1)) == RATE // 10, result
    runs = sound_runs(y)
    assert runs and runs[-1][1] - runs[0][0] > 4 * RATE, runs
    # Sound two seconds after the burst: the model was not left poisoned.
    start = runs[0][0]
    late = y[start + int(3.0 * RATE):start + int(4.5 * RATE)]
    assert np.sqrt(np.mean(late.astype(np.float64) ** 2)) > 1e-3, "silence after the burst"
