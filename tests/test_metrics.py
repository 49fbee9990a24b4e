"""Every metric of ``dtlnd.metrics`` against a case whose answer is known.

Synthetic signals with exact answers (a 30 dB attenuation is 30 dB of
ERLE) and the real recordings where only speech will do (PESQ, the MOS
models, the talk-type rule).
"""

from __future__ import annotations

import numpy as np
import pytest
from audio_util import read
from extra_util import eval_extra  # noqa: F401 (the fixture below)

from dtlnd import metrics as M

FAR_MIC = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_mic.wav"
FAR_LPB = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_lpb.wav"
NEAR_MIC = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav"
NEAR_LPB = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_lpb.wav"

RNG = np.random.default_rng(8)


def noise(n: int, dbfs: float = -20.0) -> np.ndarray:
    x = RNG.standard_normal(n)
    return (x * 10 ** (dbfs / 20) / np.sqrt(np.mean(x * x))).astype(np.float32)


def bursts(n: int, on: list[tuple[float, float]], dbfs: float = -20.0) -> np.ndarray:
    """Noise during the (start s, end s) stretches, digital silence elsewhere."""
    x = np.zeros(n, np.float32)
    for a, b in on:
        x[int(a * 16000):int(b * 16000)] = noise(int(b * 16000) - int(a * 16000), dbfs)
    return x


@pytest.fixture(scope="module")
def pairs(audio_dir):
    def pair(mic, lpb):
        m, f = read(audio_dir / mic), read(audio_dir / lpb)
        n = min(len(m), len(f))
        return m[:n], f[:n]
    return {"far": pair(FAR_MIC, FAR_LPB), "near": pair(NEAR_MIC, NEAR_LPB)}


def test_frame_levels_of_a_full_scale_sine_and_of_silence():
    t = np.arange(16000) / 16000
    db = M.frame_levels(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert len(db) == 16000 // M.FRAME
    assert np.allclose(db, -3.01, atol=0.01)
    assert (M.frame_levels(np.zeros(3200, np.float32)) == M.LEVEL_FLOOR_DBFS).all()
    with pytest.raises(M.MetricError):
        M.frame_levels(np.zeros(100, np.float32))


def test_si_sdr_of_a_signal_against_itself_scaled_is_capped():
    s = noise(16000)
    assert M.si_sdr_db(0.3 * s, s) == M.SI_SDR_CAP_DB
    assert M.si_sdr_db(s, 2.0 * s) == M.SI_SDR_CAP_DB
    assert M.si_sdr_db(np.zeros_like(s), s) == -M.SI_SDR_CAP_DB


@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_si_sdr_of_independent_noise_is_its_snr_whatever_the_gain(snr):
    s = noise(160000, -20)
    e = s + noise(160000, -20 - snr)
    # independent white noise: the best-fit scale is 1 within 1e-3, so SI-SDR = SNR
    assert M.si_sdr_db(e, s) == pytest.approx(snr, abs=0.1)
    assert M.si_sdr_db(0.1 * e, s) == pytest.approx(snr, abs=0.1)


def test_si_sdr_rejects_a_silent_reference():
    with pytest.raises(M.MetricError, match="silent"):
        M.si_sdr_db(noise(1000), np.zeros(1000, np.float32))


def test_erle_of_a_30_db_attenuation_is_30_db():
    mic = noise(32000)
    assert M.erle_db(mic, mic * 10 ** (-30 / 20)) == pytest.approx(30.0, abs=1e-4)
    assert M.erle_db(mic, mic) == pytest.approx(0.0, abs=1e-6)
    assert M.erle_db(mic, np.zeros_like(mic)) == M.SI_SDR_CAP_DB


def test_erle_counts_only_the_given_frames():
    mic = noise(32000)
    out = mic.copy()
    out[:16000] *= 10 ** (-40 / 20)  # first half: 40 dB down; second half untouched
    frames = np.zeros(len(mic) // M.FRAME, bool)
    frames[: 16000 // M.FRAME] = True
    assert M.erle_db(mic, out, frames) == pytest.approx(40.0, abs=1e-3)
    assert M.erle_db(mic, out, ~frames) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(M.MetricError, match="no far-end-only frames"):
        M.erle_db(mic, out, np.zeros_like(frames))


def test_talk_type_rule_on_synthetic_signals():
    n = 6 * 16000
    far = bursts(n, [(0.5, 2.0), (3.0, 5.0)])
    echo = 0.3 * np.roll(far, 800) + noise(n, -70)  # 50 ms acoustic delay, a quiet room
    assert M.detect_talk_type(echo, far) == "st"
    near = bursts(n, [(2.4, 2.9), (5.4, 5.9)], -25)  # talks in the far end's pauses
    assert M.detect_talk_type(echo + near, far) == "dt"
    over = bursts(n, [(1.0, 1.5)], -15)  # talks only while the far end does, 15 dB over the echo
    assert M.near_over_echo(echo, far) == 0.0
    assert M.near_over_echo(echo + over, far) > 0.1
    assert M.detect_talk_type(echo + over, far) == "dt"
    assert M.detect_talk_type(echo + over, far, clean=over) == "dt"
    assert M.detect_talk_type(echo, far, clean=np.zeros(n, np.float32) + noise(n, -90)) == "st"
    assert M.detect_talk_type(near + noise(n, -70), np.zeros(n, np.float32)) == "nst"


def test_talk_type_rule_on_the_recordings(pairs):
    mic, far = pairs["far"]
    assert M.detect_talk_type(mic, far) == "st"
    mic, far = pairs["near"]
    assert M.detect_talk_type(mic, far) == "nst"
    assert M.near_over_echo(*pairs["far"]) == 0.0
    # the near-end talker over the far-end recording: double talk
    n = min(len(pairs["far"][0]), len(pairs["near"][0]))
    mic, far, near = pairs["far"][0][:n], pairs["far"][1][:n], pairs["near"][0][:n]
    assert M.detect_talk_type(mic + near, far) == "dt"
    # only from 5 to 8 s, all of it while the far end talks: caught by the level over the echo
    during = np.where((np.arange(n) >= 5 * 16000) & (np.arange(n) < 8 * 16000), near, 0).astype(np.float32)
    assert M.detect_talk_type(mic + during, far) == "dt"
    assert M.detect_talk_type(mic + during, far, clean=during) == "dt"


def test_far_only_frames():
    n = 4 * 16000
    far = bursts(n, [(0.0, 2.0)])
    echo = 0.3 * far
    only = M.far_only_frames(echo, far, "st")
    assert only is not None
    frames_per_s = 16000 // M.FRAME
    assert only[: 2 * frames_per_s].all() and not only[int(2.25 * frames_per_s):].any()  # 0.2 s echo tail
    assert M.far_only_frames(echo, far, "dt") is None  # no way to tell near end from echo by levels
    near = bursts(n, [(1.0, 1.5)])
    with_clean = M.far_only_frames(echo + near, far, "dt", clean=near)
    assert with_clean is not None
    assert not with_clean[frames_per_s:int(1.5 * frames_per_s)].any()
    assert with_clean[: frames_per_s].all()


def test_best_lag_finds_a_shift_and_rejects_a_stranger():
    x = noise(16000)
    for shift in (0, 137, -250):
        y = np.roll(x, -shift)  # y[i] = x[i + shift]
        lag, peak = M.best_lag(x, y, 400)
        assert lag == shift and peak > 0.95
    _, peak = M.best_lag(x, noise(16000), 400)
    assert peak < 0.1


@pytest.mark.usefixtures("eval_extra")
def test_pesq_and_stoi_of_speech_against_itself_and_under_noise(pairs):
    clean = pairs["near"][0][: 5 * 16000]
    assert M.pesq_wb(clean, clean) == pytest.approx(4.64, abs=0.01)  # the top of the P.862.2 mapping
    assert M.stoi(clean, clean) == pytest.approx(1.0, abs=1e-6)
    noisy = clean + noise(len(clean), -30)
    assert 1.0 <= M.pesq_wb(clean, noisy) < 3.0
    assert 0.5 < M.stoi(clean, noisy) < 0.99


@pytest.mark.usefixtures("eval_extra")
def test_pesq_of_a_silent_reference_is_none():
    assert M.pesq_wb(np.zeros(3 * 16000, np.float32), noise(3 * 16000)) is None


@pytest.mark.usefixtures("eval_extra")
def test_dnsmos_hears_the_noise(pairs):
    speech = pairs["near"][0]
    quiet, noisy = M.dnsmos(speech), M.dnsmos(speech + noise(len(speech), -25))
    assert set(quiet) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}
    assert all(1.0 <= v <= 5.0 for v in (*quiet.values(), *noisy.values()))
    assert quiet["dnsmos_bak"] - noisy["dnsmos_bak"] > 1.0


@pytest.mark.usefixtures("eval_extra")
def test_aecmos_hears_the_echo(pairs):
    mic, far = pairs["far"]
    with_echo = M.aecmos(far, mic, mic, "st")
    echo_gone = M.aecmos(far, mic, np.zeros_like(mic) + noise(len(mic), -80), "st")
    assert with_echo["aecmos_echo"] < 2.5 < 4.0 < echo_gone["aecmos_echo"]
    with pytest.raises(M.MetricError, match="talk type"):
        M.aecmos(far, mic, mic, "both")
