"""A rig at 44.1 kHz (441-frame periods): no common grid with 16 kHz, so soxr converts both ways.

soxr's stream returns its output in bursts, so the bridge holds 40 ms more
here than at 16 or 48 kHz.  The loopback is compared with ``dtlnd process``
output at 44.1 kHz (soxr brings the reference up), over the best second.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import soxr
from audio_util import read, snr_db
from rig import TRIES, Recorder, Rig, daemon, lag, require_rig, write_raw
from test_rig_48k import NEAR_MIC, process


def test_ns_at_44k1_both_ways_through_soxr(audio_dir, tmp_path):
    """A 44.1 kHz rig (441-frame periods): soxr both ways, the run clean, the content the offline output's."""
    rig = Rig(require_rig(audio_dir.parent), tmp_path, "44k1", rate=44100, period=441)
    rig.start()
    try:
        x = read(audio_dir / NEAR_MIC)
        ref = process(rig, x, tmp_path, "in", "--model", "dtln_ns_float")
        # Compared at 44.1 kHz: 44.1 / 16 has no common grid, so a 16 kHz comparison would be off by a
        # fraction of a sample.
        ref44 = soxr.resample(ref, 16000, 44100).astype(np.float32)
        x44 = soxr.resample(x, 16000, 44100).astype(np.float32)
        raw = write_raw(tmp_path / "in44.raw", np.concatenate([x44, np.zeros(44100 * 6, np.float32)]))
        for i in range(TRIES):
            since = rig.log_size()
            rec = Recorder(rig, tmp_path / f"loop{i}.raw")
            time.sleep(0.3)
            d = daemon(rig, "--input", "rig_file_mic_in", "--output", "rig_loop_play", "--output-format",
                       "FLOAT_LE", "--measure", "--duration", 8, "--model", "dtln_ns_float",
                       env=rig.with_env(RIG_IN_FILE=str(raw)))
            status = d.wait(50)
            time.sleep(0.3)
            snrs = seconds_snr(rec.stop()[:, 0], ref44)
            # A run with no clean second is tried again only when jackd itself lost time.
            trouble = rig.trouble(since)
            if (snrs and max(snrs) >= 20) or not trouble:
                break
        else:
            pytest.skip(f"jackd itself lost time in all {TRIES} runs (the last: {trouble}): no clean second")
    finally:
        rig.stop()
    assert "Traceback" not in d.stderr, d.stderr
    assert "runs at 44100 Hz: resampling to 16000 Hz in process (soxr)" in d.stderr, d.stderr
    assert "runs at 44100 Hz: resampling from 16000 Hz in process (soxr)" in d.stderr, d.stderr
    assert status == 0 or "result: OK" not in d.stdout, d.stdout
    # Over the best second: misses (which the daemon must then report) leave zeros elsewhere.
    assert snrs and max(snrs) >= 20, f"44.1 kHz loopback vs process: SNR {np.round(snrs, 1)} dB\n{d.stdout}"
    assert min(snrs) >= 20 or "result: OK" not in d.stdout, f"SNR {np.round(snrs, 1)} dB, and OK:\n{d.stdout}"


def seconds_snr(y44: np.ndarray, ref44: np.ndarray) -> list[float]:
    """SNR (dB) of each second of the recording (from its first sound) against the aligned reference."""
    sounding = np.flatnonzero(np.abs(y44) > 1e-6)
    if not len(sounding):
        return []
    y = y44[sounding[0]:]
    d = lag(y, ref44)
    return [snr_db(ref44[a - d:a - d + 44100], y[a:a + 44100])
            for a in range(max(d, 0) + 44100, min(len(y), d + len(ref44)) - 2 * 44100, 22050)]
