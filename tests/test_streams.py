"""`dtlnd.streams`: the C callback copies PortAudio's buffers in and out of the arrays made at open.

The streams are opened on the rig's PCMs (PortAudio needs a real device to
open one); the C callback is then called with buffers made here, as
PortAudio would call it, and once the stream runs, by PortAudio itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rig import Rig, require_rig

SCRIPT = r"""
import time
import numpy as np
from dtlnd import devices
from dtlnd.streams import INPUT_OVERFLOW, OUTPUT_UNDERFLOW, open_stream

sd = devices.sd()
ffi = sd._ffi
calls = []

def on_input(indata, frames, t, status):
    calls.append(("in", indata.copy(), frames, t, status))

def on_output(outdata, frames, t, status):
    outdata[:] = np.arange(outdata.size, dtype=outdata.dtype).reshape(outdata.shape)
    calls.append(("out", frames, status))

def on_duplex(indata, outdata, frames, t, status):
    calls.append(("duplex", indata.copy(), status))
    outdata[:] = indata[:, :1] * 2

aec, loop = devices.resolve("rig_aec_in", "input"), devices.resolve("rig_loop_play", "output")
kw = dict(samplerate=16000, blocksize=128, latency=0.008)
s_in = open_stream("input", on_input, device=aec.index, channels=2, dtype="float32", **kw)
s_out = open_stream("output", on_output, device=loop.index, channels=1, dtype="int16", **kw)
c_in, c_out = s_in._dtlnd_callback[0], s_out._dtlnd_callback[0]

x = np.arange(256, dtype=np.float32)  # 128 frames x 2 channels, interleaved
assert c_in(ffi.from_buffer(x), ffi.NULL, 128, ffi.NULL, INPUT_OVERFLOW, ffi.NULL) == 0
kind, got, frames, t, status = calls.pop()
assert (got == x.reshape(128, 2)).all() and frames == 128 and t is None and status == INPUT_OVERFLOW
x[:] = -1  # the array handed over was a copy of PortAudio's buffer, made in the stream's own array
assert (got != -1).all()
assert c_in(ffi.from_buffer(x), ffi.NULL, 64, ffi.NULL, 0, ffi.NULL) == 2 and not calls  # paAbort, no call

dst = np.zeros(128, np.int16)
assert c_out(ffi.NULL, ffi.from_buffer(dst), 128, ffi.NULL, OUTPUT_UNDERFLOW, ffi.NULL) == 0
assert calls.pop() == ("out", 128, OUTPUT_UNDERFLOW) and (dst == np.arange(128)).all()
s_in.close()
s_out.close()

s_dx = open_stream("duplex", on_duplex, device=(aec.index, loop.index), channels=(2, 1),
                   dtype=("float32", "float32"), **kw)
c_dx = s_dx._dtlnd_callback[0]
out = np.full(128, 7.0, np.float32)
assert c_dx(ffi.from_buffer(x), ffi.from_buffer(out), 128, ffi.NULL, 0, ffi.NULL) == 0
assert (out == -2).all() and (calls.pop()[1] == -1).all()
assert c_dx(ffi.NULL, ffi.from_buffer(out), 128, ffi.NULL, 0, ffi.NULL) == 0  # no input: zeros, not stale data
assert (out == 0).all() and (calls.pop()[1] == 0).all()

# And PortAudio's own calls, for half a second of a running stream.
s_dx.start()
time.sleep(0.5)
s_dx.stop()
s_dx.close()
print(len(calls), sorted({c[0] for c in calls}))
"""


def test_c_callbacks_copy_in_and_out_and_abort_on_a_wrong_frame_count(audio_dir: Path, tmp_path: Path):
    with Rig(require_rig(audio_dir.parent), tmp_path, "streams") as r:
        env = dict(r.env, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
        res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    count, kinds = res.stdout.split(maxsplit=1)
    assert int(count) >= 30 and kinds.strip() == "['duplex']", res.stdout
