"""``dtlnd run --pipeline`` on the real-time rig: the loopback carries exactly what ``process`` writes.

The pipelined daemon runs model 2 on its worker thread under real audio
timing; its output must still be bit-identical to the sequential
``process`` output (one hop later, which the cross-correlation absorbs).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from audio_util import read, snr_db
from rig import RATE, Proc, Recorder, carries_exactly, daemon, lag, sound_runs, until_clean, write_raw
from test_daemon_rig import EDGE, OUT, _aec_input, dtlnd, rig, rig_folder, run_env  # noqa: F401


@pytest.mark.parametrize("mode, model", [("aec", "dtln_aec_256_quant"), ("aec+ns", "dtln_aec_128_quant")])
def test_pipelined_stream_is_sample_exact(rig, audio_dir, tmp_path, mode, model):  # noqa: F811
    wav, x = _aec_input(audio_dir, tmp_path)
    raw = write_raw(tmp_path / "in.raw", np.concatenate([x, np.zeros((RATE * 4, *x.shape[1:]), np.float32)]))
    offline = tmp_path / "offline.wav"
    r = dtlnd("process", wav, offline, "--mode", mode, "--model", model, "--subtype", "FLOAT", env=rig.env)
    assert r.returncode == 0, r.stderr
    ref = read(offline)

    def attempt(i: int) -> tuple[np.ndarray, Proc]:
        rec = Recorder(rig, tmp_path / f"loop{i}.raw")
        time.sleep(0.3)
        d = daemon(rig, "--input", "rig_file_aec_in", "--mode", mode, "--model", model, "--pipeline", *OUT,
                   "--duration", "4", "--measure", env=run_env(rig, raw))
        status = d.wait(30)
        time.sleep(0.3)
        y = rec.stop()[:, 0]
        assert "Traceback" not in d.stderr and status in (0, 1), d.stderr
        return y, d

    y, _ = until_clean(rig, attempt, lambda r: r[1].stdout, lambda r: carries_exactly(r[0], ref, EDGE))
    runs = sound_runs(y)
    assert runs, "the loopback recording is all zeros"
    start, end = runs[0][0], runs[-1][1]
    d_lag = lag(y, ref)
    assert 0 <= d_lag - start < 1024 + 128, f"lag {d_lag} for output starting at {start}"
    lo, hi = max(start, d_lag) + EDGE, min(end, d_lag + len(ref)) - EDGE
    assert hi - lo > 2 * RATE
    got, want = y[lo:hi], ref[lo - d_lag:hi - d_lag]
    assert np.array_equal(got, want), f"not bit-exact: SNR {snr_db(want, got):.1f} dB"
