"""Helpers for the reference-alignment tests: the AEC-challenge takes, shifts, the live hop loop."""

from __future__ import annotations

import numpy as np
import pytest
from audio_util import read, rms_dbfs

from dtlnd import align, engine
from dtlnd.constants import RATE

FAR = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk"
NEAR = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk"
ms = align.ms_to_samples


def take(audio_dir, name):
    mic, lpb = read(audio_dir / f"{name}_mic.wav"), read(audio_dir / f"{name}_lpb.wav")
    n = min(len(mic), len(lpb))
    return mic[:n], lpb[:n]


def shifted(x: np.ndarray, ms_later: float) -> np.ndarray:
    """``x`` delayed by ``ms_later`` (negative: earlier), same length, zero-filled."""
    s = ms(ms_later)
    y = np.zeros_like(x)
    if s >= 0:
        y[s:] = x[:len(x) - s]
    else:
        y[:s] = x[-s:]
    return y


def live(proc, mic, far, poll_every=31):
    """The hop path as ``dtlnd run`` drives it, the estimator polled as its worker thread does."""
    out = np.zeros(len(mic) // 128 * 128, np.float32)
    for k in range(len(out) // 128):
        s = slice(k * 128, (k + 1) * 128)
        proc.process_hop(mic[s], far[s], out[s])
        if k % poll_every == poll_every - 1:
            proc.alignment.poll()
    return out


def settled(y: np.ndarray, limit: float = -60.0, block: float = 0.5) -> float:
    """Seconds until every later ``block``-second stretch of ``y`` is at or below ``limit`` dBFS."""
    b = int(block * RATE)
    levels = [rms_dbfs(y[i:i + b]) for i in range(0, len(y) - b + 1, b)]
    bad = [i for i, v in enumerate(levels) if v > limit]
    return (bad[-1] + 1) * block if bad else 0.0

# -- fixtures of the alignment tests (import them by name) -------------------------------------

@pytest.fixture(scope="module")
def farend(audio_dir):
    return take(audio_dir, FAR)


@pytest.fixture(scope="module")
def nearend(audio_dir):
    return take(audio_dir, NEAR)


@pytest.fixture(scope="module")
def aec(models_dir):
    return engine.build("aec", model_dir=models_dir)
