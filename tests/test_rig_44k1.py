"""A rig at 44.1 kHz (441-frame periods): no integer ratio to 16 kHz, so `dtlnd.resample.Rational` converts.

441 device frames are exactly 160 samples at 16 kHz: each callback converts
one such period by a fixed matrix, and whole hops are cut from a queue.
``run --measure`` must then be as clean as at 16 or 48 kHz (soxr's stream,
used here before, returned bursts of up to 50 ms that ran the playback dry
six times a second).  The loopback is compared with ``dtlnd process``
output at 44.1 kHz (soxr brings the reference up: a different filter, so
close, not exact), and the delay ``--measure`` reports with a
cross-correlation of the microphone bus and the loopback.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from audio_util import read, snr_db
from rig import Proc, Recorder, Rig, daemon, lag, require_rig, until_clean, write_raw
from test_daemon_rig import NEAR_LPB, probe_delay
from test_rig_48k import NEAR_MIC, process

from dtlnd.resample import Rational

HI = 44100


@pytest.fixture(scope="module")
def rig44(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with Rig(require_rig(audio_dir.parent), tmp_path_factory.mktemp("rig44"), "44k1", rate=HI, period=441) as r:
        yield r


def test_ns_at_44k1_is_clean_and_carries_the_offline_output(rig44, audio_dir, tmp_path):
    rig = rig44
    x = read(audio_dir / NEAR_MIC)
    ref = process(rig, x, tmp_path, "in", "--model", "dtln_ns_float")
    # Compared at 44.1 kHz, where the recording's start is a whole frame.  The path's delay is not: the
    # converters' 72 samples at 16 kHz, plus where the bridge primed on the output's 160-sample grid (a
    # multiple of 32: hops of 128), in frames of 441/160 of a sample.  The reference is delayed by each
    # of those five fractions of a frame; the run must match one of them.
    ref_up = soxr.resample(ref, 16000, HI)
    refs44 = [fractional_delay(ref_up, ((2 * Rational(HI, up=True).delay + 32 * k) * HI / 16000) % 1.0)
              for k in range(5)]
    x44 = soxr.resample(x, 16000, HI).astype(np.float32)
    raw = write_raw(tmp_path / "in44.raw", np.concatenate([x44, np.zeros(HI * 6, np.float32)]))

    def attempt(i: int) -> tuple[np.ndarray, Proc, int]:
        rec = Recorder(rig, tmp_path / f"loop{i}.raw")
        time.sleep(0.3)
        d = daemon(rig, "--input", "rig_file_mic_in", "--output", "rig_loop_play", "--output-format", "FLOAT_LE",
                   "--measure", "--duration", 8, "--model", "dtln_ns_float", env=rig.with_env(RIG_IN_FILE=str(raw)))
        status = d.wait(50)
        time.sleep(0.3)
        assert "Traceback" not in d.stderr, d.stderr
        return rec.stop()[:, 0], d, status

    def seconds(y44: np.ndarray) -> list[float]:
        """Each second's SNR against the reference at the run's fraction of a frame (the one whose worst is best)."""
        return max((seconds_snr(y44, ref44) for ref44 in refs44), key=lambda v: min(v, default=-np.inf))

    y44, d, status = until_clean(rig, attempt, lambda r: r[1].stdout, lambda r: min(seconds(r[0]), default=0) >= 25)
    assert status == 0, d.stdout
    assert "runs at 44100 Hz: resampling to 16000 Hz in process (FIR 160:441)" in d.stderr, d.stderr
    assert "runs at 44100 Hz: resampling from 16000 Hz in process (FIR 441:160)" in d.stderr, d.stderr
    snrs = seconds(y44)
    assert len(snrs) >= 8, snrs
    print(f"44.1 kHz loopback vs process output, per second: SNR {np.round(snrs, 1)} dB")


@pytest.mark.parametrize("clock", ["separate", "shared"])
def test_measured_delay_at_44k1_matches_cross_correlation(rig44, audio_dir, tmp_path, clock):
    """Live input: ``aplay`` -> mic bus -> daemon -> loopback, both buses recorded in one JACK cycle.

    The rig's PCMs all run on jackd's clock, so one duplex stream (``clock: shared``) is right for them too.
    """
    rig = rig44
    mic, lpb = read(audio_dir / NEAR_MIC)[:4 * 16000], read(audio_dir / NEAR_LPB)[:4 * 16000]
    src = tmp_path / "src.wav"
    sf.write(src, soxr.resample(np.stack([mic, lpb], axis=1), 16000, HI), HI, subtype="FLOAT")

    found, reported = probe_delay(rig, src, tmp_path, "--input", "rig_mic_in", "--output", "rig_loop_play",
                                  "--output-format", "FLOAT_LE", "--model", "dtln_ns_float", "--clock", clock)
    print(f"44.1 kHz, clock {clock}: end-to-end delay by cross-correlation {found:.1f} ms, --measure reports "
          f"{reported:.1f} ms")
    assert abs(found - reported) <= 4.0, f"cross-correlation {found:.1f} ms, --measure {reported:.1f} ms"


def fractional_delay(x: np.ndarray, frames: float) -> np.ndarray:
    """``x`` delayed by ``frames`` (< 1) by a linear phase shift, as float32."""
    n = 1 << (len(x) + 64).bit_length()
    spectrum = np.fft.rfft(x, n) * np.exp(-2j * np.pi * np.fft.rfftfreq(n) * frames)
    return np.fft.irfft(spectrum, n)[:len(x)].astype(np.float32)


def seconds_snr(y44: np.ndarray, ref44: np.ndarray) -> list[float]:
    """SNR (dB) of each second of the recording (from its first sound, in half-second steps) against the reference."""
    sounding = np.flatnonzero(np.abs(y44) > 1e-6)
    if not len(sounding):
        return []
    y = y44[sounding[0]:]
    d = lag(y, ref44)
    return [snr_db(ref44[a - d:a - d + HI], y[a:a + HI])
            for a in range(max(d, 0) + HI, min(len(y), d + len(ref44)) - 2 * HI, HI // 2)]
