"""Reference alignment: how far the echo trails the far-end reference, and what to shift.

DTLN-aec cancels the echo only when the reference leads it by a little
(10-100 ms on the AEC-challenge recordings; see the README's curve).  Real
reference paths (ALSA dmix/plug buffers, USB, HDMI, Bluetooth) put 30-500 ms
between them, so this module estimates that lag and decides the shift:

* `gcc_phat` finds the lag on one window (microphone and reference
  decimated to 4 kHz, 100-1800 Hz), with a peak-to-sidelobe confidence;
* `Tracker` accepts a lag only after `VOTES` confident windows agree
  (hysteresis), and moves the alignment only when the lead it gives is more
  than `HOLD_MS` from the target: silence, near-end talk or weakly correlated
  music never move it;
* `plan` turns a lag into whole-hop delays: of the reference when it is
  early, else of the microphone (bounded by `MIC_DELAY_MAX_MS`: latency);
* `align_file` runs the same windows and tracker over a whole file for
  ``dtlnd process``.

Nothing here runs on the audio path: see `dtlnd.delayline` for that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import numpy as np

from .constants import RATE, SHIFT

log = logging.getLogger("dtlnd")

#: The estimator's rate: 16 kHz decimated by 4 (speech echo is mostly below 2 kHz).
EST_RATE = 4000
DECIMATE = RATE // EST_RATE
#: Seconds of audio per estimate, and between estimates.
WINDOW_S = 2.0
STEP_S = 0.5
#: The band the cross-spectrum is whitened over, Hz.
BAND = (100.0, 1800.0)
#: Peak-to-sidelobe ratio an estimate needs: unrelated signals give 4-8.5 on the test recordings, echo 18-150.
CONFIDENCE_MIN = 12.0
#: Consecutive confident estimates within `AGREE_MS` needed to accept a lag.
VOTES = 2
AGREE_MS = 2.0
#: Keep the alignment while the lead it gives is within this of ``ref_lead``.  The curve is flat
#: (-69 to -73 dBFS) for leads of 8-100 ms, but under drift a band of -24/+48 ms measured 6 dB worse.
HOLD_MS = 24.0
#: A change of more hops than this (96 ms) also zeroes the echo canceller's LSTM states: they had
#: adapted to a reference too far off to cancel.  Smaller ones (drift, a re-centre) only crossfade.
RESET_STEP_HOPS = 12
#: The microphone may be delayed at most this much when the reference trails the echo.
MIC_DELAY_MAX_MS = 200.0
#: Levels (dBFS RMS over a window) below which a signal counts as inactive.
FAR_ACTIVE_DB = -55.0
MIC_ACTIVE_DB = -60.0
#: Warn once after this long with an active microphone and no usable reference / correlation.
WARN_AFTER_S = 20.0


def ms_to_samples(ms: float) -> int:
    return round(ms * RATE / 1000.0)


def samples_to_ms(n: float) -> float:
    return 1000.0 * n / RATE


@dataclass(frozen=True)
class Estimate:
    """One window's answer: the echo trails the reference by ``lag`` samples (16 kHz)."""

    lag: int
    confidence: float
    far_db: float
    mic_db: float

    @property
    def usable(self) -> bool:
        return self.far_db >= FAR_ACTIVE_DB and self.mic_db >= MIC_ACTIVE_DB and self.confidence >= CONFIDENCE_MIN


def level_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def gcc_phat(mic: np.ndarray, far: np.ndarray, min_lag: int, max_lag: int) -> tuple[int, float]:
    """Lag (in samples of ``EST_RATE``) of ``mic`` behind ``far`` in [min_lag, max_lag], and its confidence.

    The cross-spectrum is whitened (PHAT) over `BAND` so that the result is
    a sharp peak at the echo path's direct delay whatever the spectra; the
    confidence is that peak's height over the other lags' spread
    (peak-to-sidelobe ratio).  Polarity is ignored: speakers may be wired
    either way round.
    """
    n = len(mic)
    nfft = 1 << int(n + max(max_lag, -min_lag, 0)).bit_length()
    cross = np.fft.rfft(mic, nfft) * np.conj(np.fft.rfft(far, nfft))
    freqs = np.arange(len(cross)) * (EST_RATE / nfft)
    band = (freqs >= BAND[0]) & (freqs <= BAND[1])
    mag = np.abs(cross)
    floor = 1e-6 * (mag[band].max() if band.any() else 1.0) + 1e-30
    cross = np.where(band, cross / np.maximum(mag, floor), 0)
    r = np.fft.irfft(cross, nfft)
    lags = np.concatenate([r[nfft + min_lag:], r[:max_lag + 1]]) if min_lag < 0 else r[min_lag:max_lag + 1]
    a = np.abs(lags)
    k = int(np.argmax(a))
    side = np.concatenate([a[:max(0, k - 8)], a[k + 9:]])
    spread = float(side.std()) if len(side) > 8 else 0.0
    conf = float((a[k] - side.mean()) / spread) if spread > 0 else 0.0
    return k + min_lag, conf


def estimate(mic_d: np.ndarray, far_d: np.ndarray, min_lag: int, max_lag: int) -> Estimate:
    """`gcc_phat` on one decimated window, lags given and returned in 16 kHz samples."""
    far_db, mic_db = level_db(far_d), level_db(mic_d)
    if far_db < FAR_ACTIVE_DB or mic_db < MIC_ACTIVE_DB:
        return Estimate(0, 0.0, far_db, mic_db)
    lag, conf = gcc_phat(mic_d, far_d, min_lag // DECIMATE, -(-max_lag // DECIMATE))
    return Estimate(lag * DECIMATE, conf, far_db, mic_db)


def plan(lag: int, lead: int, far_max_hops: int, mic_max_hops: int) -> tuple[int, int]:
    """(reference delay, microphone delay) in whole hops that make the reference lead the echo by ~``lead``.

    Whole hops keep the delay lines allocation-free; the lead then lands
    within 4 ms of the target, well inside the flat part of the curve.
    """
    need = lag - lead
    if need >= 0:
        return min(round(need / SHIFT), far_max_hops), 0
    return 0, min(round(-need / SHIFT), mic_max_hops)


class Tracker:
    """Hysteresis over estimates: what the delay lines should be, and why.

    ``state`` is one of: ``searching`` (no lag accepted yet), ``locked``,
    ``holding`` (the last windows were not confident: the alignment stays),
    ``fixed``.
    """

    def __init__(self, lead_ms: float, max_ms: float, far_hops: int = 0, mic_hops: int = 0) -> None:
        self.lead = ms_to_samples(lead_ms)
        self.far_max = int(ms_to_samples(max_ms) // SHIFT)
        self.mic_max = int(ms_to_samples(MIC_DELAY_MAX_MS) // SHIFT)
        self.max_lag = ms_to_samples(max_ms)
        self.min_lag = -ms_to_samples(MIC_DELAY_MAX_MS)
        self.far_hops, self.mic_hops = far_hops, mic_hops
        self.lag: Optional[int] = None  # the accepted lag
        self.last: Optional[Estimate] = None
        self.state = "searching"
        self.changes = 0
        self._cand: Optional[int] = None
        self._votes = 0
        self._first_vote = 0  # index of the estimate that started the current candidate
        self.count = 0

    @property
    def lead_now(self) -> Optional[int]:
        """The lead (samples) the current delays give the accepted lag."""
        return None if self.lag is None else self.lag - self.far_hops * SHIFT + self.mic_hops * SHIFT

    def update(self, est: Estimate) -> Optional[int]:
        """Take one estimate; return the index of the estimate the new delays date from, if they changed."""
        self.last = est
        self.count += 1
        if not est.usable:
            self._votes = 0
            self._cand = None
            if self.lag is not None:
                self.state = "holding"
            return None
        if self._cand is not None and abs(est.lag - self._cand) <= ms_to_samples(AGREE_MS):
            self._votes += 1
        else:
            self._cand, self._votes, self._first_vote = est.lag, 1, self.count - 1
        if self._votes < VOTES:
            return None
        self.lag = self._cand
        self.state = "locked"
        lead = self.lead_now
        if lead is not None and abs(lead - self.lead) <= ms_to_samples(HOLD_MS):
            return None
        far, mic = plan(self._cand, self.lead, self.far_max, self.mic_max)
        if (far, mic) == (self.far_hops, self.mic_hops):
            return None
        self.far_hops, self.mic_hops = far, mic
        self.changes += 1
        return self._first_vote


def decimate(x: np.ndarray) -> np.ndarray:
    """16 kHz -> `EST_RATE` for a whole signal (soxr, as the live worker's stream does)."""
    import soxr

    return soxr.resample(np.ascontiguousarray(x, np.float32), RATE, EST_RATE, quality="HQ").astype(np.float32)


def parse_ref_delay(value: Union[str, float, int]) -> Union[str, float]:
    """``auto`` or milliseconds; anything else raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    return float(text)


@dataclass(frozen=True)
class FileAlignment:
    """What `align_file` found and applied: a shift of the reference per hop range."""

    #: (first sample, reference shift in samples: > 0 delays it, < 0 advances it)
    schedule: tuple[tuple[int, int], ...]
    lag: Optional[int]
    confidence: float
    windows: int
    usable: int

    def describe(self) -> str:
        if self.lag is None:
            what = "no echo path found" if self.usable == 0 else "lag not stable"
            return (f"reference alignment: {what} ({self.usable} of {self.windows} windows usable): "
                    "reference used as it is")
        shifts = ", ".join(f"{samples_to_ms(s):+.0f} ms from {p / RATE:.1f} s" for p, s in self.schedule)
        return (f"reference alignment: echo lag {samples_to_ms(self.lag):.1f} ms (confidence {self.confidence:.1f}); "
                f"reference shifted {shifts or '0 ms'}")


def align_file(mic: np.ndarray, far: np.ndarray, lead_ms: float, max_ms: float) -> FileAlignment:
    """Track the lag over a whole file with the live estimator's windows and hysteresis.

    A file can look ahead: the first lag accepted applies from the start, a
    later one from the point `_change_point` finds, and a reference that
    trails the echo is advanced instead of delaying the microphone.
    """
    mic_d, far_d = decimate(mic), decimate(far)
    win, step = int(WINDOW_S * EST_RATE), int(STEP_S * EST_RATE)
    tr = Tracker(lead_ms, max_ms)
    starts = list(range(0, max(1, len(mic_d) - win + 1), step))
    schedule: list[tuple[int, int]] = []
    usable = 0
    conf = 0.0
    old: Optional[int] = None
    for s in starts:
        est = estimate(mic_d[s:s + win], far_d[s:s + win], tr.min_lag, tr.max_lag)
        usable += est.usable
        first = tr.update(est)
        if est.usable and tr.lag is not None and abs(est.lag - tr.lag) <= ms_to_samples(AGREE_MS):
            conf = est.confidence
        if first is not None and tr.lag is not None:
            at = 0
            if schedule and old is not None:
                lo = starts[max(first - 1, 0)]
                at = _change_point(mic_d, far_d, old, tr.lag, lo, starts[first] + win) * DECIMATE // SHIFT * SHIFT
            schedule.append((at, (tr.far_hops - tr.mic_hops) * SHIFT))
        old = tr.lag
    return FileAlignment(tuple(schedule), tr.lag, conf, len(starts), usable)


def _change_point(mic_d: np.ndarray, far_d: np.ndarray, old: int, new: int, lo: int, hi: int) -> int:
    """Where in ``[lo, hi)`` (decimated samples) the echo lag went from ``old`` to ``new`` (16 kHz samples).

    Per quarter second: how much better the microphone correlates with the
    reference at the new lag than at the old; the change point is the
    boundary that best separates "old is better" from "new is better".
    """
    seg = EST_RATE // 4

    def corr(a: int, lag: int) -> float:
        b = a - lag // DECIMATE
        if b < 0 or b + seg > len(far_d):
            return 0.0
        x, y = mic_d[a:a + seg], far_d[b:b + seg]
        return float(abs(np.dot(x, y)) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))

    starts = list(range(lo, max(lo + 1, hi - seg + 1), seg))
    gain = np.array([corr(a, new) - corr(a, old) for a in starts])
    # score(b) = sum(gain[b:]) - sum(gain[:b]) for each boundary b
    score = gain.sum() - 2 * np.concatenate([[0.0], np.cumsum(gain)])
    return starts[0] + int(np.argmax(score[:len(starts)])) * seg


def shift_reference(far: np.ndarray, schedule: tuple[tuple[int, int], ...], fade: int = SHIFT) -> np.ndarray:
    """``far`` delayed (or advanced) per ``schedule``, crossfading over ``fade`` samples at each change."""
    if not schedule:
        return far
    n = len(far)
    out = np.zeros(n, np.float32)
    idx = np.arange(n)
    prev: Optional[np.ndarray] = None
    for i, (at, shift) in enumerate(schedule):
        end = schedule[i + 1][0] if i + 1 < len(schedule) else n
        src = idx[at:end] - shift
        ok = (src >= 0) & (src < n)
        seg = np.zeros(end - at, np.float32)
        seg[ok] = far[src[ok]]
        if prev is not None and at < n:
            k = min(fade, end - at)
            ramp = (np.arange(k, dtype=np.float32) + 0.5) / k
            src_old = idx[at:at + k] - prev[1]
            ok_old = (src_old >= 0) & (src_old < n)
            old = np.zeros(k, np.float32)
            old[ok_old] = far[src_old[ok_old]]
            seg[:k] = seg[:k] * ramp + old * (1 - ramp)
        out[at:end] = seg
        prev = np.array([at, shift])
    return out


class AlignedReference(NamedTuple):
    """A file's reference as `align_reference` shifted it."""

    far: np.ndarray
    #: what was found and done, for the log, and its level
    text: str
    level: int
    #: samples at which the echo canceller's states are zeroed (changes over `RESET_STEP_HOPS`, as live)
    resets: tuple[int, ...]


def align_reference(mic: np.ndarray, far: np.ndarray, ref_delay: Union[str, float],
                    ref_delay_max: Optional[float] = None, lead_ms: Optional[float] = None) -> AlignedReference:
    """The reference of a file shifted as ``ref_delay`` asks (whole hops, as live).

    ``ref_delay_max`` and ``lead_ms`` default to the settings' defaults.
    """
    from .config import Settings

    ref_delay_max = Settings.ref_delay_max if ref_delay_max is None else ref_delay_max
    lead_ms = Settings.ref_lead if lead_ms is None else lead_ms
    if ref_delay == "auto":
        if np.ptp(far) == 0:
            return AlignedReference(far, f"reference alignment: the far-end reference is constant (value "
                                    f"{far[0]:.3g}): wrong channel or nothing played; the microphone passes "
                                    "through as it is", logging.WARNING, ())
        found = align_file(mic, far, lead_ms, ref_delay_max)
        resets = tuple(at for (_, was), (at, shift) in zip(found.schedule, found.schedule[1:])
                       if abs(shift - was) > RESET_STEP_HOPS * SHIFT)
        return AlignedReference(shift_reference(far, found.schedule), found.describe(), logging.INFO, resets)
    shift = round(ms_to_samples(float(ref_delay)) / SHIFT) * SHIFT
    text = f"reference alignment: fixed, reference shifted {samples_to_ms(shift):+.0f} ms"
    return AlignedReference(shift_reference(far, ((0, shift),)), text, logging.INFO, ())
