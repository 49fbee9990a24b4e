"""Reference alignment in ``dtlnd run`` on the user-space audio rig (see tests/rig.py).

The daemon reads a 2-channel file (AEC-challenge far-end take: microphone,
and the reference shifted earlier as a software reference path would) from
frame 0 through rig_file_aec_in, clocked by jackd, and writes the loopback,
which ``arecord`` records.  Checked: the loopback's residual echo after
convergence, the time to converge, the estimator's CPU cost, the --measure
and STATUS= reports, a delay jump mid-stream, and a late reference (the
microphone delayed, and the reported latency with it).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from align_util import FAR, settled, shifted
from audio_util import read, rms_dbfs
from rig import RATE, NotifySocket, Proc, Recorder, Rig, daemon, require_rig, sound_runs, until_clean, write_raw

OUT = ("--output", "rig_loop_play", "--output-format", "FLOAT_LE")


@pytest.fixture(scope="module")
def rig(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with Rig(require_rig(audio_dir.parent), tmp_path_factory.mktemp("rig"), "al") as r:
        yield r


@pytest.fixture
def notify_socket():
    folder = Path(tempfile.mkdtemp(prefix="dtlnd-notify-"))  # short: AF_UNIX paths stop at 107 bytes
    sock = NotifySocket(folder)
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def take(audio_dir):
    mic, lpb = read(audio_dir / f"{FAR}_mic.wav"), read(audio_dir / f"{FAR}_lpb.wav")
    n = min(len(mic), len(lpb))
    # -100 dBFS of noise: exact zeros in the loopback then mean "no daemon output yet"
    noise = np.random.default_rng(2).standard_normal(n).astype(np.float32) * 1e-5
    return mic[:n] + noise, lpb[:n]


def run_aligned(rig, tmp_path, mic, far, seconds, env_extra=None):
    """Stream (mic, far) through ``dtlnd run --mode aec``; the loopback from the daemon's first output."""
    x = np.stack([mic, far], axis=1)
    raw = write_raw(tmp_path / "in.raw", np.concatenate([x, np.zeros((4 * RATE, 2), np.float32)]))

    def attempt(i: int) -> tuple[np.ndarray, Proc]:
        rec = Recorder(rig, tmp_path / f"loop{i}.raw")
        time.sleep(0.3)
        d = daemon(rig, "--input", "rig_file_aec_in", "--mode", "aec", *OUT, "--duration", seconds, "--measure",
                   env=rig.with_env(RIG_IN_FILE=str(raw), **(env_extra or {})))
        status = d.wait(seconds + 30)
        time.sleep(0.3)
        y = rec.stop()[:, 0]
        assert "Traceback" not in d.stderr and status in (0, 1), d.stderr
        return y, d

    y, d = until_clean(rig, attempt, lambda r: r[1].stdout)
    runs = sound_runs(y)
    assert runs, "the loopback recording is all zeros"
    return y[runs[0][0]:runs[-1][1]], d


def estimator_cost(stdout: str) -> float:
    m = re.search(r"^  alignment: .*estimator ([\d.]+) CPU s per audio s$", stdout, re.MULTILINE)
    assert m, f"no alignment line in the --measure summary:\n{stdout}"
    return float(m.group(1))


def test_rig_reference_300_ms_ahead_converges(rig, take, tmp_path, notify_socket):
    mic, lpb = take
    mic2, far2 = np.tile(mic, 2), shifted(np.tile(lpb, 2), -300)
    y, d = run_aligned(rig, tmp_path, mic2, far2, 16, notify_socket.env())
    t = settled(y)
    cost = estimator_cost(d.stdout)
    locked = [line for _, line in d.lines("reference alignment: align locked")]
    print(f"rig, 300 ms ahead: settled after {t:.1f} s of far-end speech; residual after 6 s "
          f"{rms_dbfs(y[6 * RATE:]):.1f} dBFS; estimator {cost:.4f} CPU s per audio s; {locked}")
    assert t <= 5.0, f"residual above -60 dBFS until {t:.1f} s"
    assert rms_dbfs(y[6 * RATE:]) <= -60
    assert len(locked) == 1 and re.search(r"lag 335\.\d ms .*reference \+296 ms", locked[0]), locked
    assert 0 < cost < 0.05
    reports = [line for line in d.stdout.splitlines() if line.startswith("[")]
    assert any("| align locked: lag 335." in line for line in reports), reports
    statuses = [m for _, m in notify_socket.messages if m.startswith("STATUS=aec")]
    assert any(re.search(r"\| align locked: lag 335\.\d ms \(confidence [\d.]+\), reference \+296 ms$", m)
               for m in statuses), statuses


def test_rig_delay_jump_reconverges(rig, take, tmp_path):
    """100 ms early, then 250 ms (a Bluetooth speaker reconnecting): aligned again within 5 s."""
    mic, lpb = take
    far = np.concatenate([shifted(lpb, -100), shifted(lpb, -250)])
    y, d = run_aligned(rig, tmp_path, np.concatenate([mic, mic]), far, 21)
    jump = len(mic)
    after = settled(y[jump:])
    locked = [line for _, line in d.lines("reference alignment: align locked")]
    print(f"rig, jump 100 -> 250 ms at {jump / RATE:.2f} s: settled {after:.1f} s after it; {locked}")
    assert after <= 5.0, f"residual above -60 dBFS until {after:.1f} s after the jump"
    assert len(locked) == 2 and "lag 285." in locked[-1], locked


def test_rig_reference_behind_the_echo_delays_the_microphone(rig, take, tmp_path):
    """The reference 40 ms late: the microphone is delayed 48 ms, and the reported latency says so."""
    mic, lpb = take
    y, d = run_aligned(rig, tmp_path, np.tile(mic, 2)[:12 * RATE], shifted(np.tile(lpb, 2), 40)[:12 * RATE], 10)
    locked = [line for _, line in d.lines("reference alignment: align locked")]
    assert len(locked) == 1 and "mic +48 ms (latency)" in locked[0], locked
    m = re.search(r"^\s+latency: [\d.]+ ms = ([\d.]+) algorithmic", d.stdout, re.MULTILINE)
    assert m and float(m.group(1)) == pytest.approx(24.0 + 48.0), d.stdout
    t = settled(y)
    print(f"rig, reference 40 ms late: settled after {t:.1f} s; {locked}")
    assert t <= 5.0
