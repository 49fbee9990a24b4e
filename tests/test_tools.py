"""The measurement tools' own arithmetic (tools/): /proc figures and the two-clock delay analysis.

The tools themselves need the rig and minutes of audio; these check, on
real processes and real speech, that what they compute is what they claim.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import rigtools as rt  # noqa: E402
import two_clocks  # noqa: E402


def test_cpu_seconds_counts_child_processes():
    """A child burning CPU is in the parent's tree figure, and not in the parent's own."""
    p = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                          "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.0: pass'])"])
    try:
        time.sleep(0.3)
        pids = rt.tree(p.pid)
        assert len(pids) == 2, pids
        c0, own0 = rt.cpu_seconds(pids), rt.cpu_seconds([p.pid])
        time.sleep(0.5)
        c1, own1 = rt.cpu_seconds(rt.tree(p.pid)), rt.cpu_seconds([p.pid])
    finally:
        p.wait(10)
    assert c1 - c0 >= 0.2  # the grandchild ran (on a loaded machine it gets less than the 0.5 s wall)
    assert own1 - own0 < 0.05


def test_memory_leaves_out_jack_shared_memory():
    """20 MB touched in a /dev/shm/jack* mapping raise VmRSS but not the figure without JACK."""
    path = Path(f"/dev/shm/jack-tooltest-{os.getpid()}")
    size = 20 << 20
    with path.open("w+b") as f:
        f.truncate(size)
        m = mmap.mmap(f.fileno(), size)
    try:
        rss0, _ = rt.memory_mb([os.getpid()])
        m.write(b"\1" * size)
        rss1, _ = rt.memory_mb([os.getpid()])
        vm = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
        assert vm - rss1 >= 19.5  # the mapping is resident, and left out
        assert abs(rss1 - rss0) < 3.0
    finally:
        m.close()
        path.unlink()


def _speech(audio_dir: Path, seconds: float) -> np.ndarray:
    x, _ = sf.read(audio_dir / "airconditioning.wav", dtype="float64")
    return np.tile(x, int(np.ceil(seconds * rt.RATE / len(x))))[: int(seconds * rt.RATE)]


def _through(mic: np.ndarray, ppm: float, delay_s, seconds: float) -> np.ndarray:
    """What a recorder on a clock ``ppm`` fast records when the delay is ``delay_s(t)``."""
    m = np.arange(int(seconds * rt.RATE * (1 + ppm * 1e-6)))
    t_real = m / (rt.RATE * (1 + ppm * 1e-6))
    return np.interp((t_real - delay_s(t_real)) * rt.RATE, np.arange(len(mic)), mic, left=0.0, right=0.0)


@pytest.mark.parametrize("ppm", [1000.0, -100.0])
def test_two_clock_analysis_finds_a_constant_delay(audio_dir, ppm):
    mic = _speech(audio_dir, 60)
    out = _through(mic, ppm, lambda t: 0.060 + 0 * t, 60)
    r = two_clocks.analyse(mic, out, ppm)
    assert r["windows"] >= 20
    assert r["residual_range_ms"] < 0.1 + abs(ppm) * 1e-6 * 2000  # a 2 s window's own drift, in ms
    assert abs(r["residual_trend_ms_per_min"]) < 0.1
    assert abs(r["measured_drift_ppm"] - ppm) < 5
    assert r["delay_steps"] == 0 and r["dropouts"] == 0


def test_two_clock_analysis_sees_a_delay_that_grows(audio_dir):
    """A daemon that does not follow the drift: its delay grows by 6 ms a minute, and the residual says so."""
    mic = _speech(audio_dir, 60)
    out = _through(mic, 100.0, lambda t: 0.060 + 0.0001 * t, 60)
    r = two_clocks.analyse(mic, out, 100.0)
    assert 5.5 < r["residual_trend_ms_per_min"] < 6.5
    assert r["residual_range_ms"] > 4.0
