"""A burst of NaN and Inf in the live input, on the rig: finite output, sound back, the run failed by name.

The file-fed microphone carries, 2 s in, 50 ms of NaN then 50 ms of
alternating +Inf/-Inf.  The engine's guard turns them into zeros before any
model sees them, so after the burst the loopback is what ``dtlnd process``
writes for the same file with the burst zeroed: bit for bit with a FLOAT_LE
loopback, within int16 rounding with the default S16_LE.  ``--measure``
counts the 1600 samples as non-finite input and, by its summary rule (any
non-finite input sample is a named cause), ends the run with exit 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_util import read, rms_dbfs, snr_db
from rig import RATE, Recorder, daemon, lag, summary_field, write_raw
from test_rig_faults import finish, own_rig  # noqa: F401  (own_rig: a fixture, shared with the fault tests)


@pytest.fixture
def rig(own_rig):  # noqa: F811  (the imported fixture, taken as an argument)
    """A fresh rig per test, as the fault tests use (a stopped or starved JACK client can wedge a shared one)."""
    return own_rig

MODEL = "dtln_ns_float"
NEAR_MIC = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav"
BURST_AT, BURST = 2 * RATE, RATE // 10  # 100 ms of NaN/Inf, 2 s into the file


@pytest.fixture(scope="module")
def burst(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The raw input with the NaN/Inf burst, and ``process``'s output of the same file with the burst zeroed."""
    tmp = tmp_path_factory.mktemp("nan")
    x = read(audio_dir / NEAR_MIC)
    x = (x + np.random.default_rng(2).standard_normal(len(x)) * 1e-4).astype(np.float32)  # no exact zeros
    x[BURST_AT:BURST_AT + BURST] = 0.0
    wav, offline = tmp / "zeroed.wav", tmp / "offline.wav"
    sf.write(wav, x, RATE, subtype="FLOAT")
    r = subprocess.run([sys.executable, "-m", "dtlnd", "process", str(wav), str(offline), "--model", MODEL,
                        "--subtype", "FLOAT"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    bad = x.copy()
    half = BURST // 2
    bad[BURST_AT:BURST_AT + half] = np.nan
    bad[BURST_AT + half:BURST_AT + BURST] = np.where(np.arange(BURST - half) % 2, np.inf, -np.inf)
    return write_raw(tmp / "burst.raw", bad), read(offline)


@pytest.mark.parametrize("fmt", ["FLOAT_LE", "S16_LE"])
def test_a_nan_inf_burst_is_zeroed_counted_and_the_sound_comes_back(rig, burst, tmp_path, fmt):
    raw, ref = burst
    rec = Recorder(rig, tmp_path / "loop.raw")
    time.sleep(0.3)
    d = daemon(rig, "--input", "rig_file_mic_in", "--model", MODEL, "--output", "rig_loop_play",
               "--output-format", fmt, "--measure", "--duration", "6", env=rig.with_env(RIG_IN_FILE=str(raw)))
    status = finish(d)
    time.sleep(0.3)
    y = rec.stop()[:, 0]
    assert "Traceback" not in d.stderr, d.stderr
    assert np.isfinite(y).all(), f"{np.count_nonzero(~np.isfinite(y))} non-finite samples in the loopback"
    # The daemon names the burst and fails the run for it.
    assert status == 1, d.stdout
    (nonfinite,) = summary_field(d.stdout, r"non-finite input samples (\d+);")
    assert nonfinite == BURST, d.stdout
    result = d.stdout.splitlines()[-1]
    assert result.startswith("  result: FAIL: ") and f"non-finite input samples {BURST}" in result, d.stdout
    # Two seconds after the burst, for one second: the zeroed file's offline output, and sound.
    d_lag = lag(y, ref)
    lo = d_lag + BURST_AT + BURST + 2 * RATE
    hi = lo + RATE
    assert hi <= len(y) and hi - d_lag <= len(ref), f"recording ends {len(y) / RATE:.1f} s, lag {d_lag}"
    got, want = y[lo:hi], ref[lo - d_lag:hi - d_lag]
    snr = snr_db(want, got)
    level = rms_dbfs(got)
    clean = result == f"  result: FAIL: non-finite input samples {BURST}"  # under load: other causes, named
    if fmt == "FLOAT_LE":
        assert np.array_equal(got, want) or not clean, f"not the offline output after the burst: SNR {snr:.1f} dB"
    assert snr >= 15 or not clean, f"SNR {snr:.1f} dB against the zeroed file's offline output\n{d.stdout}"
    assert level > -50 and abs(level - rms_dbfs(want)) < 1, f"level {level:.1f} dBFS after the burst"
