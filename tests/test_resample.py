"""`dtlnd.resample.Rational` (any rate with no integer ratio to 16 kHz), block by block as the callbacks call it."""

from __future__ import annotations

import numpy as np
import pytest

from dtlnd.constants import RATE, SHIFT
from dtlnd.resample import Polyphase, Rational, converter, one_hop_per_call


def run(conv: Rational, x: np.ndarray) -> np.ndarray:
    """``x`` through ``conv`` in its calls' sizes."""
    calls = len(x) // conv.in_size
    y = np.zeros(calls * conv.out_size, np.float32)
    for i in range(calls):
        conv.process(x[i * conv.in_size:(i + 1) * conv.in_size], y[i * conv.out_size:(i + 1) * conv.out_size])
    return y


def tone(f: float, rate: int, n: int, delay_s: float = 0.0) -> np.ndarray:
    return np.sin(2 * np.pi * f * (np.arange(n) / rate - delay_s)).astype(np.float32)


def snr(ref: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(ref ** 2) / np.mean((y - ref) ** 2)))


@pytest.mark.parametrize("rate", [44100, 22050, 11025, 88200, 24000, 8000])
def test_a_tone_comes_through_at_the_stated_delay_both_ways(rate):
    """Up, then down again: each way delays by ``delay`` 16 kHz samples, ~90 dB clean (a tone within 7 kHz)."""
    f = min(1000.0, 0.3 * rate)
    up, down = Rational(rate, up=True), Rational(rate, up=False)
    x = tone(f, RATE, 200 * up.in_size)
    y = run(up, x)
    settled = rate // 10
    assert snr(tone(f, rate, len(y), up.delay / RATE)[settled:], y[settled:]) > 80
    z = run(down, y)
    back = tone(f, RATE, len(z), (up.delay + down.delay) / RATE)
    assert snr(back[RATE // 10:], z[RATE // 10:]) > 80


def test_what_cannot_be_held_at_16_khz_is_filtered_out():
    """A 10 kHz tone at 44.1 kHz has no place at 16 kHz: over 100 dB down; 7 kHz passes within 0.1 dB."""
    down = Rational(44100, up=False)
    for f, lo, hi in ((10000.0, -np.inf, -100.0), (7000.0, -0.1, 0.1)):
        z = run(down, tone(f, 44100, 100 * down.in_size))[RATE // 10:]
        level = 20 * np.log10(np.sqrt(np.mean(z ** 2) * 2))
        assert lo < level < hi, (f, level)


def test_calls_are_whole_periods_of_both_rates():
    """441 frames are 160 samples: a call at 44.1 kHz is 10 ms; at 24 kHz, 192 frames are exactly one hop."""
    assert (Rational(44100, up=False).in_size, Rational(44100, up=False).out_size) == (441, 160)
    assert (Rational(44100, up=True).in_size, Rational(44100, up=True).out_size) == (160, 441)
    assert (Rational(24000, up=False).in_size, Rational(24000, up=False).out_size) == (192, SHIFT)
    assert isinstance(converter(48000, up=True), Polyphase) and converter(RATE, up=True) is None
    assert isinstance(converter(44100, up=True), Rational)
    assert [r for r in (8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 192000) if not one_hop_per_call(r)] \
        == [22050, 44100]


def test_a_reset_forgets_the_history():
    conv = Rational(44100, up=True)
    x = tone(1000.0, RATE, conv.in_size * 4)
    first = run(conv, x)
    conv.reset()
    assert np.array_equal(run(conv, x), first)
