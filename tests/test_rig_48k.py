"""A rig whose every PCM runs at 48 kHz only (jackd at 48 kHz, 384-frame periods).

The daemon opens the devices at 48 kHz and converts 3:1 in process, both
ways, with `dtlnd.resample.Polyphase`.  ``run --measure`` must then be as
clean as at 16 kHz: no xruns, no deadline misses, no lost input, from the
first second.  The loopback, brought back to 16 kHz by soxr, is compared
with ``dtlnd process`` output for what the engine saw: the 48 kHz feed taken
down by the daemon's own decimator, at each of the three phases of its 3:1
grid (the file starts at any of them; a third of a sample moves a quantized
AEC model's output by 7-14 dB SNR).  It is not bit-exact: the loopback went
through the daemon's interpolator and soxr.  What it holds above 8.5 kHz
(images of the 16 kHz signal) is at least 60 dB below the total.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from audio_util import read, snr_db
from rig import Proc, Recorder, Rig, daemon, lag, require_rig, until_clean, write_raw

from dtlnd.constants import SHIFT
from dtlnd.resample import Polyphase

NEAR_MIC = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav"
NEAR_LPB = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_lpb.wav"
HI = 48000


@pytest.fixture(scope="module")
def rig48(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with Rig(require_rig(audio_dir.parent), tmp_path_factory.mktemp("rig48"), "48k", rate=HI, period=384) as r:
        yield r


def to_48k(x16: np.ndarray) -> np.ndarray:
    return soxr.resample(x16, 16000, HI).astype(np.float32)


def run_48k(rig: Rig, tmp: Path, x16: np.ndarray, seconds: float, *args: str,
            refs: list[np.ndarray], min_snr: float) -> tuple[int, str, np.ndarray]:
    """Feed ``x16`` (16 kHz, frames x channels) at 48 kHz; return status, stdout and the 48 kHz loopback.

    A run is clean when the daemon says OK and `check_content` holds for ``refs`` and ``min_snr``
    (`until_clean`: a cycle jackd skipped for the recorder moves the output's phase; the daemon
    cannot see it).
    """
    x48 = to_48k(x16)
    pad = np.zeros((HI * 6, *x48.shape[1:]), np.float32)
    raw = write_raw(tmp / "in48.raw", np.concatenate([x48, pad]))

    def attempt(i: int) -> tuple[int, Proc, np.ndarray]:
        rec = Recorder(rig, tmp / f"loop{i}.raw")
        time.sleep(0.3)
        d = daemon(rig, "--output", "rig_loop_play", "--output-format", "FLOAT_LE", "--measure", "--duration",
                   seconds, *args, env=rig.with_env(RIG_IN_FILE=str(raw)))
        status = d.wait(seconds + 40)
        time.sleep(0.3)
        y = rec.stop()[:, 0]
        assert "Traceback" not in d.stderr, d.stderr
        assert "runs at 48000 Hz: resampling to 16000 Hz in process (FIR 1:3)" in d.stderr, d.stderr
        assert "runs at 48000 Hz: resampling from 16000 Hz in process (FIR 3:1)" in d.stderr, d.stderr
        return status, d, y

    def content_ok(r: tuple[int, Proc, np.ndarray]) -> bool:
        try:
            check_content(r[2], refs, min_snr)
        except AssertionError:
            return False
        return True

    status, d, y = until_clean(rig, attempt, lambda r: r[1].stdout, content_ok)
    return status, d.stdout, y


def check_content(y48: np.ndarray, refs: list[np.ndarray], min_snr: float) -> None:
    """``refs``: the offline output for each input phase (`offline`)."""
    nz = np.flatnonzero(np.abs(y48) > 1e-6)
    assert len(nz), "the loopback is silent"
    y48 = y48[nz[0]:]
    seg = y48[HI: HI * 6].astype(np.float64)
    assert len(seg) == HI * 5
    power = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
    freq = np.fft.rfftfreq(len(seg), 1 / HI)
    images = 10 * np.log10(power[freq > 8500].sum() / power.sum())
    assert images <= -60, f"images above 8.5 kHz at {images:.1f} dB"
    # The recording's start is at any phase of the daemon's output grid too: compare at the best of the three.
    snrs = np.zeros((len(refs), 3))
    for out_phase in range(3):
        y = soxr.resample(y48[out_phase:], HI, 16000).astype(np.float32)
        for in_phase, ref in enumerate(refs):
            d = lag(y, ref)
            lo, hi = max(d, 0) + 16000, min(len(y), d + len(ref)) - 1600
            assert hi - lo > 3 * 16000, (d, len(y), len(ref))
            snrs[in_phase, out_phase] = snr_db(ref[lo - d:hi - d], y[lo:hi])
    best = snrs.max()
    assert best >= min_snr, f"loopback vs process: SNR {best:.1f} dB (input x output phase:\n{snrs.round(1)})"


def summary_ok(stdout: str) -> None:
    assert "result: OK" in stdout, stdout
    assert re.search(r"lost audio: 0 gaps, 0 ms", stdout), stdout


def decimated(x48: np.ndarray, phase: int) -> np.ndarray:
    """What the daemon's engine gets from ``x48[phase:]`` (frames x channels): its own 1:3 decimator."""
    x48 = x48[phase:]
    blocks = len(x48) // (3 * SHIFT)
    out = np.zeros((blocks * SHIFT, x48.shape[1]), np.float32)
    for c in range(x48.shape[1]):
        down = Polyphase(3, up=False)
        for k in range(blocks):
            down.process(x48[k * 3 * SHIFT:(k + 1) * 3 * SHIFT, c], out[k * SHIFT:(k + 1) * SHIFT, c])
    return out


def process(rig: Rig, x16: np.ndarray, tmp: Path, name: str, *args: str) -> np.ndarray:
    """``dtlnd process`` output (float) for ``x16``."""
    wav, out = tmp / f"{name}.wav", tmp / f"{name}_out.wav"
    sf.write(wav, x16, 16000, subtype="FLOAT")
    r = subprocess.run([sys.executable, "-m", "dtlnd", "process", str(wav), str(out), "--subtype", "FLOAT", *args],
                       capture_output=True, text=True, env=rig.env, timeout=120)
    assert r.returncode == 0, r.stderr
    return read(out)


def offline(rig: Rig, x16: np.ndarray, tmp: Path, *args: str) -> list[np.ndarray]:
    """``dtlnd process`` output for each of the three phases at which the daemon may decimate ``to_48k(x16)``."""
    x48 = to_48k(x16.reshape(len(x16), -1))
    return [process(rig, decimated(x48, phase), tmp, f"phase{phase}", *args) for phase in range(3)]


def test_ns_at_48k_is_clean_and_carries_the_offline_output(rig48, audio_dir, tmp_path):
    x = read(audio_dir / NEAR_MIC)
    refs = offline(rig48, x, tmp_path, "--model", "dtln_ns_float")
    status, out, y = run_48k(rig48, tmp_path, x, 15, "--input", "rig_file_mic_in", "--model", "dtln_ns_float",
                             refs=refs, min_snr=35)
    assert status == 0, out
    summary_ok(out)
    check_content(y, refs, 35)


def test_aec_at_48k_with_two_channels(rig48, audio_dir, tmp_path):
    mic, lpb = read(audio_dir / NEAR_MIC), read(audio_dir / NEAR_LPB)
    n = min(len(mic), len(lpb))
    x = np.stack([mic[:n], lpb[:n]], axis=1)
    refs = offline(rig48, x, tmp_path, "--mode", "aec", "--model", "dtln_aec_128_quant")
    status, out, y = run_48k(rig48, tmp_path, x, 8, "--input", "rig_file_aec_in", "--mode", "aec",
                             "--model", "dtln_aec_128_quant", refs=refs, min_snr=18)
    assert status == 0, out
    summary_ok(out)
    check_content(y, refs, 18)

