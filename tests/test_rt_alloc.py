"""No array is allocated on the real-time path: both callbacks and the clock bridge, at 16, 48 and 44.1 kHz.

`rtcheck.temporaries` counts numpy data buffers alive at every C-call
return inside the calls (tracemalloc's numpy domain), so even a temporary
freed before the callback returns is caught.  Small Python objects (the
column views of ``indata``, ints from the clock) are not arrays' data and
are not counted; they come from CPython's object allocator.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rig import Rig, require_rig
from rtcheck import temporaries

from dtlnd.bridge import ClockBridge

SCRIPT = r"""
import sys
import numpy as np
from rtcheck import temporaries
from dtlnd import config, engine
from dtlnd.audio import AudioPipeline
from dtlnd.measure import BlockStats

mode, inp, fmt, n_in = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = config.load(None, {"mode": mode, "input.device": inp, "input.channels": n_in, "output.device": "rig_loop_play",
                       "output.format": fmt})
proc = engine.build(s.mode, s.model, s.ns_model, s.model_dir, s.runtime, s.threads)
p = AudioPipeline(s, proc, BlockStats())
fi, fo = p.input_stream.blocksize, p.output_stream.blocksize
dtype = {"S16_LE": np.int16, "S32_LE": np.int32, "FLOAT_LE": np.float32}[fmt]
rng = np.random.default_rng(0)
ins = [rng.standard_normal((fi, n_in)).astype(np.float32) * 0.1 for _ in range(8)]
outs = [np.zeros((fo, 1), dtype) for _ in range(8)]
flags = 0  # no PortAudio status flag (dtlnd.streams passes them as an int)
def run(n):
    for i in range(n):
        p._input_callback(ins[i % 8], fi, None, flags)
        p._output_callback(outs[i % 8], fo, None, flags)
run(300)
k = [0]
def one():
    i = k[0] = k[0] + 1
    p._input_callback(ins[i % 8], fi, None, flags)
    p._output_callback(outs[i % 8], fo, None, flags)
extra = temporaries(one, 200)
st = p.stats
assert st.callback_errors == 0, st.last_error
print(p.in_rate, p.out_rate, fi, fo, extra, st.blocks)
"""


@pytest.mark.parametrize("rate, period", [(16000, 128), (48000, 384), (44100, 441)])
def test_callbacks_allocate_no_buffers(audio_dir: Path, tmp_path: Path, rate: int, period: int):
    r = Rig(require_rig(audio_dir.parent), tmp_path, "alloc", rate=rate, period=period)
    r.start()
    try:
        for mode, inp, fmt, n_in in (("ns", "rig_mic_in", "S16_LE", 1), ("aec", "rig_aec_in", "FLOAT_LE", 2)):
            env = dict(r.env, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
            res = subprocess.run([sys.executable, "-c", SCRIPT, mode, inp, fmt, str(n_in)], env=env,
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            in_rate, out_rate, fi, fo, extra, blocks = map(int, res.stdout.split())
            assert (in_rate, out_rate, fi, fo) == (rate, rate, period, period), res.stdout
            assert blocks >= 500
            assert extra == 0, f"{mode} at {rate} Hz: {extra} numpy buffers allocated in a callback"
    finally:
        r.stop()


def test_bridge_read_write_allocate_nothing():
    """Copying, interpolating (while correcting drift) and playing silence for a late block."""
    bridge = ClockBridge(target=320)
    block = np.ones(128, np.float32)
    out = np.zeros(128, np.float32)
    t = [0, 3_000_000]
    due = [0.0]

    def step(drift: float = 0.0, write: bool = True) -> None:
        """One 8 ms writer period; the reader runs 1 + drift times as often."""
        if write:
            bridge.write(block, now_ns=t[0])
        t[0] += 8_000_000
        due[0] += 1.0 + drift
        while due[0] >= 1.0:
            due[0] -= 1.0
            bridge.read(out, now_ns=t[1])
            t[1] += int(8_000_000 / (1 + drift))

    for _ in range(400):
        step()
    assert not bridge.engaged
    assert temporaries(step, 200) == 0
    missed = bridge.missed
    assert temporaries(lambda: step(write=False), 4) == 0
    assert bridge.missed > missed
    for _ in range(100):
        step()
    for _ in range(4000):
        step(0.003)
    assert bridge.engaged
    assert temporaries(lambda: step(0.003), 200) == 0
    assert bridge.engaged


def test_the_check_sees_a_temporary():
    assert temporaries(lambda: np.ones(128, np.float32) + 1.0, 3) >= 1
