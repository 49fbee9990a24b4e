"""jackd stopped and started again under ``run --measure``: the lost stream is counted and named.

The rig's own jackd is the daemon's "sound card": stopping it kills both
streams for real, as unplugging a USB device would.  The daemon reopens them
once jackd is back, in the same process, and its summary fails the run with
"audio stream lost N times".  Its own rig, so the other tests' jackd stays up.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from audio_util import rms_dbfs
from rig import RATE, Recorder, Rig, daemon, require_rig, summary_field, write_raw
from test_rig_faults import finish


@pytest.mark.parametrize("playback", ["callback", "push"])  # push: the capture callback's write fails too
def test_a_stopped_jackd_is_a_lost_stream_in_the_summary(audio_dir: Path, tmp_path: Path, playback: str) -> None:
    own = Rig(require_rig(audio_dir.parent), tmp_path, "sl")
    own.start()
    try:
        x = np.random.default_rng(4).standard_normal(RATE * 30).astype(np.float32) * 0.05
        raw = write_raw(tmp_path / "noise.raw", x)
        d = daemon(own, "--input", "rig_file_mic_in", "--model", "dtln_ns_float", "--output", "rig_loop_play",
                   "--measure", "--duration", "9", "--playback", playback, env=own.with_env(RIG_IN_FILE=str(raw)))
        d.wait_for("audio flowing")
        time.sleep(1.0)
        own.stop()
        d.wait_for("audio lost", timeout=10)
        own.start()
        t_up = time.monotonic()
        d.wait_for("audio resumed", timeout=20, after=t_up - 0.2)
        rec = Recorder(own, tmp_path / "after.raw")
        time.sleep(1.0)
        y = rec.stop()[:, 0]
        status = finish(d)
    finally:
        own.stop()
    assert "Traceback" not in d.stderr, d.stderr
    assert rms_dbfs(y) > -60, "no sound after the stream came back"
    assert status == 1, d.stdout
    (lost,) = summary_field(d.stdout, r"audio stream lost (\d+) times$")
    assert lost >= 1, d.stdout
    assert f"audio stream lost {lost} times" in d.stdout.splitlines()[-1], d.stdout
