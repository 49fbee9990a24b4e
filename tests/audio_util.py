"""Small signal helpers for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import soundfile as sf


def read(path: Path) -> np.ndarray:
    x, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000
    return x


def rms_dbfs(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-20)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    err = ref - np.asarray(test, np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / (np.sum(err ** 2) + 1e-30))


def dtlnd(*args: object) -> subprocess.CompletedProcess:
    """Run the real command line, ``python -m dtlnd ARGS``."""
    return subprocess.run([sys.executable, "-m", "dtlnd", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def hop_output(proc, mic: np.ndarray, far=None) -> np.ndarray:
    """``proc.process_hop`` over every whole 128-sample hop of ``mic`` (and ``far``), as the audio path calls it."""
    out = np.zeros(len(mic) // 128 * 128, np.float32)
    for k in range(len(out) // 128):
        s = slice(k * 128, (k + 1) * 128)
        proc.process_hop(mic[s], None if far is None else far[s], out[s])
    return out


def traced(run) -> tuple[int, int]:
    """(bytes kept, peak bytes) while ``run()`` runs."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current - base, peak - base
