"""A plain DTLN block loop written from the contract, for comparison.

Numpy FFTs, fresh arrays every block, ``set_tensor``/``get_tensor``, the
way the upstream real-time scripts do it; roles bound by the names listed in
shared/models/MODELS.md, independently of dtlnd's own binding code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtlnd.runtime import load_runtime

# Model 1 / model 2 input names of the AEC pairs (MODELS.md):
AEC_NAMES = {"mic": "input_3", "lpb": "input_4", "est": "input_6", "lpb_block": "input_7"}


def _interp(path: Path, runtime: str):
    _, cls = load_runtime(runtime)
    it = cls(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def _by(details, pred):
    (d,) = [d for d in details if pred(d)]
    return d["index"]


def reference_loop(models: Path, name: str, mic: np.ndarray, far: np.ndarray | None = None,
                   runtime: str = "auto") -> np.ndarray:
    """Output of the block loop, one 128-sample hop per block (no delay removed)."""
    it1 = _interp(models / f"{name}_1.tflite", runtime)
    it2 = _interp(models / f"{name}_2.tflite", runtime)
    in1, out1 = it1.get_input_details(), it1.get_output_details()
    in2, out2 = it2.get_input_details(), it2.get_output_details()
    st1_in = _by(in1, lambda d: len(d["shape"]) == 4)
    st1_out = _by(out1, lambda d: len(d["shape"]) == 4)
    st2_in = _by(in2, lambda d: len(d["shape"]) == 4)
    st2_out = _by(out2, lambda d: len(d["shape"]) == 4)
    mask_out = _by(out1, lambda d: len(d["shape"]) == 3)
    block_out = _by(out2, lambda d: len(d["shape"]) == 3)
    aec = far is not None
    if aec:
        mag_in = _by(in1, lambda d: d["name"] == AEC_NAMES["mic"])
        lpb_in = _by(in1, lambda d: d["name"] == AEC_NAMES["lpb"])
        est_in = _by(in2, lambda d: d["name"] == AEC_NAMES["est"])
        lpb_block_in = _by(in2, lambda d: d["name"] == AEC_NAMES["lpb_block"])
    else:
        mag_in = _by(in1, lambda d: len(d["shape"]) == 3)
        est_in = _by(in2, lambda d: len(d["shape"]) == 3)
    masked_magnitude = name.startswith("pidtln2")  # model 1 outputs |X|*mask there
    s1 = np.zeros(next(d["shape"] for d in in1 if d["index"] == st1_in), np.float32)
    s2 = np.zeros(next(d["shape"] for d in in2 if d["index"] == st2_in), np.float32)
    in_buf = np.zeros(512, np.float32)
    lpb_buf = np.zeros(512, np.float32)
    out_buf = np.zeros(512, np.float32)
    hops = len(mic) // 128
    out = np.zeros(hops * 128, np.float32)
    for k in range(hops):
        in_buf = np.concatenate([in_buf[128:], mic[k * 128:(k + 1) * 128]])
        spec = np.fft.rfft(in_buf)
        mag = np.abs(spec)
        it1.set_tensor(mag_in, mag.reshape(1, 1, -1).astype(np.float32))
        if aec:
            lpb_buf = np.concatenate([lpb_buf[128:], far[k * 128:(k + 1) * 128]])
            it1.set_tensor(lpb_in, np.abs(np.fft.rfft(lpb_buf)).reshape(1, 1, -1).astype(np.float32))
        it1.set_tensor(st1_in, s1)
        it1.invoke()
        m = it1.get_tensor(mask_out).reshape(-1)
        s1 = it1.get_tensor(st1_out)
        if masked_magnitude:
            est_spec = m * np.exp(1j * np.angle(spec))
        else:
            est_spec = spec * m
        est = np.fft.irfft(est_spec).astype(np.float32)
        it2.set_tensor(est_in, est.reshape(1, 1, -1))
        if aec:
            it2.set_tensor(lpb_block_in, lpb_buf.reshape(1, 1, -1).astype(np.float32))
        it2.set_tensor(st2_in, s2)
        it2.invoke()
        y = it2.get_tensor(block_out).reshape(-1)
        s2 = it2.get_tensor(st2_out)
        out_buf = np.concatenate([out_buf[128:], np.zeros(128, np.float32)]) + y
        out[k * 128:(k + 1) * 128] = out_buf[:128]
    return out
