"""Live status, truthful figures under injected faults, and ``--plot``, on the audio rig (see tests/rig.py).

The faults are real: the daemon process is stopped with SIGSTOP (as a VM
pause or a scheduler stall would), and the daemon's own figures must say
so; the state file is read by ``dtlnd status`` as a user would.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rig import RATE, Recorder, daemon, sound_runs
from test_daemon_rig import OUT, no_leftovers, rig, rig_folder, run_env, speech_raw, stop  # noqa: F401 (fixtures)

SUMMARY_LOST = re.compile(r"^  lost audio: (\d+) gaps, (\d+) ms;", re.MULTILINE)


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
    # 2 s are 250 blocks; a loaded machine may delay a state write by a tick.
    assert 150 <= b["blocks"] - a["blocks"] <= 350, (a["blocks"], b["blocks"])
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
    d = daemon(rig, "--input", "rig_file_mic_in", *OUT, "--measure", "--duration", "7", env=env)
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
    after = (t_last - rec.started + 0.3) * RATE
    tail = sum(e - s for s, e in runs if s >= after)
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
    d.wait(30)
    assert "Traceback" not in d.stderr, d.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = np.frombuffer(data[16:24], ">u4")
    assert width >= 800 and height >= 500, (width, height)
    keep = Path("/tmp") / "dtlnd-run-plot.png"
    keep.write_bytes(data)
    print(f"\nplot: {keep}")
