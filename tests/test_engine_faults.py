"""The engine's fault guard: NaN/Inf input, a poisoned model state, over-range input.

Faults are injected for real: non-finite samples in a float WAV fed to
``dtlnd process``, NaN written into an interpreter's LSTM state tensor
between two hops, and input far beyond full scale.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from audio_util import dtlnd, hop_output, read, snr_db

from dtlnd import engine
from dtlnd.constants import RATE

BURST = slice(5 * RATE, 5 * RATE + RATE // 10)  # 100 ms in the middle of the file
AFTER = 7 * RATE  # two seconds after the burst
TAKE = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk"


@pytest.fixture(scope="module")
def signals(audio_dir):
    """10 s of mic + far end (AEC far-end single talk with the noisy clip added to the mic)."""
    mic = read(audio_dir / f"{TAKE}_mic.wav")[: 10 * RATE]
    lpb = read(audio_dir / f"{TAKE}_lpb.wav")[: 10 * RATE]
    noisy = read(audio_dir / "airconditioning.wav")[: 10 * RATE]
    return (mic + 0.5 * noisy).astype(np.float32), lpb


@pytest.mark.parametrize("mode", ["ns", "aec", "aec+ns"])
def test_nan_inf_burst_in_a_float_wav(tmp_path, signals, mode):
    mic, lpb = signals
    clean = np.stack([mic, lpb], axis=1)
    clean[BURST] = 0.0
    poisoned = clean.copy()
    rng = np.random.default_rng(1)
    burst = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), size=poisoned[BURST].shape)
    poisoned[BURST] = burst
    for name, data in (("zeros", clean), ("nan", poisoned)):
        sf.write(tmp_path / f"{name}.wav", data, RATE, subtype="FLOAT")
        r = dtlnd("process", "--mode", mode, tmp_path / f"{name}.wav", tmp_path / f"{name}_out.wav")
        assert r.returncode == 0, r.stderr
    ref, out = read(tmp_path / "zeros_out.wav"), read(tmp_path / "nan_out.wav")
    assert np.isfinite(out).all()
    assert np.abs(out).max() <= engine.OUT_PEAK
    assert snr_db(ref[AFTER:], out[AFTER:]) >= 15


@pytest.mark.parametrize("mode", ["ns", "aec"])
def test_nonfinite_samples_are_zeroed_and_counted(models_dir, signals, mode):
    mic, lpb = signals
    mic, lpb = mic.copy(), lpb.copy()
    zeroed_mic, zeroed_far = mic.copy(), lpb.copy()
    mic[BURST][::2] = np.nan
    zeroed_mic[BURST][::2] = 0.0
    lpb[BURST][1::4] = np.inf
    zeroed_far[BURST][1::4] = 0.0
    far = lpb if mode == "aec" else None
    proc = engine.build(mode, model_dir=models_dir)
    out = hop_output(proc, mic, far)
    assert proc.nonfinite == 800 + (400 if mode == "aec" else 0)
    assert proc.resets == 0  # the models never saw them
    proc.reset()
    assert np.array_equal(out, hop_output(proc, zeroed_mic, zeroed_far if far is not None else None))


def _poison_at(proc, stage, hop, mic, far):
    """Hops through ``proc``, writing NaN into ``stage``'s model-1 LSTM state before hop ``hop``."""
    out = np.zeros(len(mic) // 128 * 128, np.float32)
    for k in range(len(out) // 128):
        if k == hop:
            stage.pair.m1.state_in[:8] = np.nan
        s = slice(k * 128, (k + 1) * 128)
        proc.process_hop(mic[s], None if far is None else far[s], out[s])
    return out


@pytest.mark.parametrize("mode, poisoned", [("ns", 0), ("aec", 0), ("aec+ns", 0), ("aec+ns", 1)])
def test_a_poisoned_state_resets_only_its_stage(models_dir, signals, mode, poisoned):
    mic, lpb = signals
    far = None if mode == "ns" else lpb
    proc = engine.build(mode, model_dir=models_dir)
    stages = getattr(proc, "stages", (proc,))
    ref = hop_output(proc, mic, far)
    proc.reset()
    out = _poison_at(proc, stages[poisoned], BURST.start // 128, mic, far)
    assert np.isfinite(out).all()
    assert [s.resets for s in stages] == [int(i == poisoned) for i in range(len(stages))]
    assert proc.resets == 1 and proc.nonfinite == 0
    assert snr_db(ref[AFTER:], out[AFTER:]) >= 15
    # Before the fault nothing changed.
    assert np.array_equal(ref[: BURST.start], out[: BURST.start])


def test_over_range_input_is_processed_and_bounded(models_dir, signals):
    mic, _ = signals
    proc = engine.build("ns", model_dir=models_dir)
    ref = hop_output(proc, mic)
    loud = mic.copy()
    loud[BURST] *= 1e4  # +80 dB: far beyond full scale, still finite
    loud[BURST.stop:BURST.stop + 1600] = 1e30
    proc.reset()
    out = hop_output(proc, loud)
    assert np.isfinite(out).all()
    assert np.abs(out).max() <= engine.OUT_PEAK
    # Nothing was non-finite, so nothing was reset: the LSTM states carry the
    # blast's history on, and two seconds later the output follows the
    # undisturbed run to about 14 dB SNR here (a silent burst gives identity).
    assert snr_db(ref[BURST.stop + 1600 + 2 * RATE:], out[BURST.stop + 1600 + 2 * RATE:]) >= 10
    # Moderately over-range input (x4) is simply processed: no reset, no clipping needed.
    proc.reset()
    resets = proc.resets
    out4 = hop_output(proc, 4 * mic)
    assert proc.resets == resets and np.isfinite(out4).all()
    assert 10 <= 20 * np.log10(np.abs(out4).max() / np.abs(ref).max()) <= 14  # about 4x (+12 dB) louder
