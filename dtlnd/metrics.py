"""Quality metrics for ``dtlnd evaluate``: levels, talk type, ERLE, SI-SDR, and the MOS models.

The level, talk-type, ERLE, SI-SDR and alignment functions need numpy
only.  DNSMOS, AECMOS, PESQ and STOI come from the ``eval`` extra
(speechmos, onnxruntime, librosa, pesq, pystoi) and are imported inside
the functions that use them, so importing this module stays cheap.
All signals are float32 mono at 16 kHz, full scale ±1.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from .constants import RATE
from .errors import InputError

log = logging.getLogger("dtlnd")

#: Samples per level frame (20 ms).
FRAME = 320
#: A frame counts as far-end activity above this RMS, dBFS.
FAR_ACTIVE_DBFS = -50.0
#: A microphone frame counts as speech this far above the microphone's noise floor, dB.
MIC_ACTIVE_ABOVE_FLOOR_DB = 15.0
#: Echo lingers after the far end stops: far-end activity is extended by this, s.
ECHO_TAIL_S = 0.2
#: Talk-type rule thresholds (fractions of frames), see `detect_talk_type`.
FAR_ACTIVE_MIN_FRACTION = 0.05
NEAR_ONLY_MIN_FRACTION = 0.05
NEAR_OVER_ECHO_MIN_FRACTION = 0.02
#: Near-end detection during far-end activity: the echo path is judged over this many frames (100 ms) ...
ECHO_WINDOW_FRAMES = 5
#: ... and a microphone frame this far above its usual echo level carries near-end sound, dB.
NEAR_EXCESS_DB = 10.0
#: SI-SDR is capped here: a perfect estimate would otherwise be +inf, which JSON cannot hold.
SI_SDR_CAP_DB = 100.0
#: Floor for levels, dBFS: digital silence reads as this, not -inf.
LEVEL_FLOOR_DBFS = -120.0
#: Talk types AECMOS knows: near-end single talk, far-end single talk, double talk.
TALK_TYPES = ("nst", "st", "dt")


class MetricError(InputError):
    """Signals a metric cannot score (too short, silent, mismatched)."""


def frame_levels(x: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """RMS level of each whole ``frame``-sample frame, dBFS (a full-scale sine reads -3 dBFS)."""
    n = len(x) // frame
    if n == 0:
        raise MetricError(f"signal of {len(x)} samples is shorter than one {frame}-sample frame")
    power = np.mean(np.square(x[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), LEVEL_FLOOR_DBFS)


def _dilate(mask: np.ndarray, frames: int) -> np.ndarray:
    """``mask`` extended forward by ``frames`` frames (echo after the far end stops)."""
    out = mask.copy()
    for k in range(1, frames + 1):
        out[k:] |= mask[:-k]
    return out


def _levels(mic: np.ndarray, far: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frame levels of both (dBFS) and the activity masks of `activity`."""
    n = min(len(mic), len(far)) // FRAME * FRAME
    mic_db, far_db = frame_levels(mic[:n]), frame_levels(far[:n])
    far_on = _dilate(far_db > FAR_ACTIVE_DBFS, round(ECHO_TAIL_S * RATE / FRAME))
    floor = float(np.percentile(mic_db, 10))
    mic_on = mic_db > max(floor + MIC_ACTIVE_ABOVE_FLOOR_DB, -60.0)
    return mic_db, far_db, far_on, mic_on


def activity(mic: np.ndarray, far: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: is the far end active (echo possible), is the microphone active.

    Far end: frame RMS above `FAR_ACTIVE_DBFS`, extended by `ECHO_TAIL_S`.
    Microphone: `MIC_ACTIVE_ABOVE_FLOOR_DB` above its own noise floor (the
    10th percentile of its frame levels) and above -60 dBFS.
    """
    _, _, far_on, mic_on = _levels(mic, far)
    return far_on, mic_on


def near_over_echo(mic: np.ndarray, far: np.ndarray) -> float:
    """Fraction of the frames where both are active whose microphone level is too loud to be echo alone.

    The echo path is taken as the microphone's level over the loudest far-end
    frame of the last `ECHO_WINDOW_FRAMES` (100 ms: lag and spread of the
    path); its usual value is the 20th percentile over those frames (the
    quietest echo-only ones).  A frame `NEAR_EXCESS_DB` above it carries
    near-end sound.
    """
    mic_db, far_db, _, mic_on = _levels(mic, far)
    k = ECHO_WINDOW_FRAMES
    padded = np.concatenate([np.full(k - 1, LEVEL_FLOOR_DBFS), far_db])
    recent = np.lib.stride_tricks.sliding_window_view(padded, k).max(axis=1)
    both = (far_db > FAR_ACTIVE_DBFS) & mic_on
    if not both.any():
        return 0.0
    ratio = (mic_db - recent)[both]
    return float(np.mean(ratio > np.percentile(ratio, 20) + NEAR_EXCESS_DB))


def near_activity(clean: np.ndarray, frames: int) -> np.ndarray:
    """Per frame: the clean near end speaks (within 40 dB of its loudest frame, above -70 dBFS)."""
    c = np.zeros(frames * FRAME, np.float32)
    c[: min(len(c), len(clean))] = clean[: len(c)]
    near_db = frame_levels(c)
    return near_db > max(float(near_db.max()) - 40.0, -70.0)


def detect_talk_type(mic: np.ndarray, far: np.ndarray, clean: Optional[np.ndarray] = None) -> str:
    """AECMOS talk type from the levels alone (no model output involved).

    * ``nst`` (near-end single talk): the far end is active in fewer than 5 %
      of the frames.
    * With ``clean`` (the near end alone): ``dt`` when it speaks in at least
      5 % of the far end's active frames, else ``st``.
    * Without: ``dt`` (double talk) when at least 5 % of the microphone's
      active frames fall where the far end is silent (echo tail included),
      or at least 2 % of the frames where both are active are too loud to be
      echo (`near_over_echo`); ``st`` (far-end single talk) otherwise.
    """
    _, _, far_on, mic_on = _levels(mic, far)
    if far_on.mean() < FAR_ACTIVE_MIN_FRACTION:
        return "nst"
    if clean is not None:
        near_on = near_activity(clean, len(far_on))
        return "dt" if (near_on & far_on).sum() >= FAR_ACTIVE_MIN_FRACTION * far_on.sum() else "st"
    if mic_on.any() and (mic_on & ~far_on).sum() >= NEAR_ONLY_MIN_FRACTION * mic_on.sum():
        return "dt"
    return "dt" if near_over_echo(mic, far) >= NEAR_OVER_ECHO_MIN_FRACTION else "st"


def far_only_frames(mic: np.ndarray, far: np.ndarray, talk: str,
                    clean: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The frames with far-end activity and no near-end speech, or None when unknowable.

    Near-end speech is known from ``clean`` (the near end alone) when given
    (`near_activity`).  Without it, far-end single talk (``st``) has none;
    for double talk the near end cannot be told from the echo frame by
    frame, so there is no answer.
    """
    far_on, _ = activity(mic, far)
    if clean is not None:
        return far_on & ~near_activity(clean, len(far_on))
    if talk == "st":
        return far_on
    return None


def erle_db(mic: np.ndarray, out: np.ndarray, frames: Optional[np.ndarray] = None) -> float:
    """Echo return loss enhancement: microphone energy over output energy, dB.

    Over the given 20 ms ``frames`` (a boolean mask, e.g. `far_only_frames`),
    or the whole signal.  Capped at `SI_SDR_CAP_DB` for a silent output.
    """
    n = min(len(mic), len(out)) // FRAME * FRAME
    m = mic[:n].reshape(-1, FRAME).astype(np.float64)
    o = out[:n].reshape(-1, FRAME).astype(np.float64)
    if frames is not None:
        frames = frames[: len(m)]
        if not frames.any():
            raise MetricError("no far-end-only frames to measure ERLE over")
        m, o = m[frames], o[frames]
    e_mic, e_out = float(np.sum(m * m)), float(np.sum(o * o))
    if e_mic == 0.0:
        raise MetricError("the microphone is silent where ERLE is measured")
    if e_out == 0.0:
        return SI_SDR_CAP_DB
    return min(10.0 * np.log10(e_mic / e_out), SI_SDR_CAP_DB)


def si_sdr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio (Le Roux et al. 2019), dB, capped at `SI_SDR_CAP_DB`.

    Both are made zero-mean; the reference is scaled to best fit the estimate.
    """
    n = min(len(estimate), len(reference))
    s = reference[:n].astype(np.float64) - np.mean(reference[:n], dtype=np.float64)
    e = estimate[:n].astype(np.float64) - np.mean(estimate[:n], dtype=np.float64)
    ss = float(np.dot(s, s))
    if ss == 0.0:
        raise MetricError("the clean reference is silent: SI-SDR is undefined")
    target = (float(np.dot(e, s)) / ss) * s
    noise = e - target
    nn, tt = float(np.dot(noise, noise)), float(np.dot(target, target))
    if tt == 0.0:
        return -SI_SDR_CAP_DB
    if nn == 0.0 or nn < tt * 10.0 ** (-SI_SDR_CAP_DB / 10.0):
        return SI_SDR_CAP_DB
    return max(10.0 * np.log10(tt / nn), -SI_SDR_CAP_DB)


def best_lag(x: np.ndarray, y: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The shift of ``y`` that best matches ``x`` (``y[i]`` ~ ``x[i + lag]``), and the normalised peak.

    Cross-correlation by FFT over lags -max_lag..max_lag; the peak is the
    correlation coefficient at that lag (1.0: identical up to scale).
    """
    n = max(len(x), len(y)) + max_lag
    size = 1 << (2 * n - 1).bit_length()
    xf = np.fft.rfft(x.astype(np.float64), size)
    yf = np.fft.rfft(y.astype(np.float64), size)
    cc = np.fft.irfft(xf * np.conj(yf), size)
    lags = np.concatenate([cc[: max_lag + 1], cc[-max_lag:]]) if max_lag else cc[:1]
    idx = int(np.argmax(np.abs(lags)))
    lag = idx if idx <= max_lag else idx - len(lags)
    xs, ys = (x[lag:], y) if lag >= 0 else (x, y[-lag:])
    m = min(len(xs), len(ys))
    denom = float(np.sqrt(np.dot(xs[:m].astype(np.float64), xs[:m]) * np.dot(ys[:m].astype(np.float64), ys[:m])))
    peak = abs(float(lags[idx])) / denom if denom > 0 else 0.0
    return lag, peak


def _clip(x: np.ndarray) -> np.ndarray:
    """The MOS models reject samples outside ±1 (a WAV could not hold them either)."""
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def dnsmos(x: np.ndarray) -> dict[str, float]:
    """DNSMOS P.835 (speechmos): SIG, BAK, OVRL on the 1–5 scale.

    Clips shorter than 9.01 s are repeated to that length by speechmos.
    """
    from speechmos import dnsmos as _dnsmos

    r = _dnsmos.run(_clip(x), RATE)
    return {"dnsmos_sig": float(r["sig_mos"]), "dnsmos_bak": float(r["bak_mos"]),
            "dnsmos_ovrl": float(r["ovrl_mos"])}


def aecmos(far: np.ndarray, mic: np.ndarray, enh: np.ndarray, talk: str) -> dict[str, float]:
    """AECMOS (speechmos, 16 kHz model with the talk-type marker): echo and degradation MOS, 1–5.

    Only the first 20 s are scored (the model's limit).
    """
    from speechmos import aecmos as _aecmos

    if talk not in TALK_TYPES:
        raise MetricError(f"talk type {talk!r}: use one of {', '.join(TALK_TYPES)}")
    n = min(len(far), len(mic), len(enh), 20 * RATE - 1)
    r = _aecmos.run({"lpb": _clip(far[:n]), "mic": _clip(mic[:n]), "enh": _clip(enh[:n])}, RATE, talk_type=talk)
    return {"aecmos_echo": float(r["echo_mos"]), "aecmos_deg": float(r["deg_mos"])}


def pesq_wb(clean: np.ndarray, x: np.ndarray) -> Optional[float]:
    """PESQ wide-band (ITU-T P.862.2, MOS-LQO), or None when PESQ finds no speech in ``clean``."""
    from pesq import PesqError, pesq

    n = min(len(clean), len(x))
    try:
        return float(pesq(RATE, clean[:n].astype(np.float32), x[:n].astype(np.float32), "wb"))
    except PesqError as exc:  # no utterances, or too short
        log.warning("no PESQ score: %s", exc)
        return None


def stoi(clean: np.ndarray, x: np.ndarray) -> float:
    """Short-time objective intelligibility (Taal et al. 2011, ``pystoi``), 0–1."""
    from pystoi import stoi as _stoi

    n = min(len(clean), len(x))
    return float(_stoi(clean[:n].astype(np.float64), x[:n].astype(np.float64), RATE, extended=False))
