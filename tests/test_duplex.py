"""``clock: auto``'s decision (fake /proc and /sys trees), the duplex hand-off and the xrun advice."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dtlnd import config
from dtlnd.duplex import XRUN_LIMIT, XRUN_WINDOW, DirectBridge, DirectFifo, XrunWatch, card_of, choose_clock, read_cards
from dtlnd.errors import ConfigError
from dtlnd.measure import BlockStats
from dtlnd.resample import converter

CARDS = """\
 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 1 [ArrayUAC10     ]: USB-Audio - ReSpeaker 4 Mic Array (UAC1.0)
                      SEEED ReSpeaker 4 Mic Array (UAC1.0) at usb-3f980000.usb-1.3, full speed
10 [Loopback       ]: Loopback - Loopback
                      Loopback 1
"""
MIC = ("hw:1,0", "ReSpeaker 4 Mic Array (UAC1.0): USB Audio (hw:1,0)")
LOOP = ("hw:Loopback,0,0", "Loopback: PCM (hw:10,0)")


def tree(tmp: Path, cards: str = CARDS, timer: str | None = None) -> Path:
    (tmp / "proc/asound").mkdir(parents=True)
    (tmp / "proc/asound/cards").write_text(cards)
    if timer is not None:
        (tmp / "sys/module/snd_aloop/parameters").mkdir(parents=True)
        (tmp / "sys/module/snd_aloop/parameters/timer_source").write_text(timer + "\n")
    return tmp


def test_read_cards(tmp_path):
    assert read_cards(tree(tmp_path) / "proc/asound/cards") == {
        "0": ("Headphones", "bcm2835_headpho"), "1": ("ArrayUAC10", "USB-Audio"), "10": ("Loopback", "Loopback")}
    assert read_cards(tmp_path / "nothing") == {}


@pytest.mark.parametrize("names, card", [
    (("hw:1,0",), "1"), (("plughw:ArrayUAC10,0",), "1"), (("hw:CARD=ArrayUAC10,DEV=0",), "1"),
    (("default", "Loopback: PCM (hw:10,0)"), "10"), (("hw:Unknown,0",), "Unknown"), (("dtlnd_mic", "dtlnd_mic"), None),
])
def test_card_of(tmp_path, names, card):
    assert card_of(names, read_cards(tree(tmp_path) / "proc/asound/cards")) == card


def test_set_values_are_kept(tmp_path):
    for clock in ("separate", "shared"):
        assert choose_clock(clock, MIC, MIC, True, tree(tmp_path / clock))[0] == clock


def test_one_device_is_shared(tmp_path):
    clock, why = choose_clock("auto", ("rig_duplex", "rig_duplex"), ("rig_duplex", "rig_duplex"), True, tmp_path)
    assert clock == "shared" and "one device ('rig_duplex')" in why


def test_one_card_is_shared(tmp_path):
    clock, why = choose_clock("auto", MIC, ("plughw:ArrayUAC10,0", "plughw:ArrayUAC10,0"), False, tree(tmp_path))
    assert clock == "shared" and "card 1 [ArrayUAC10]" in why


@pytest.mark.parametrize("timer", ["hw:ArrayUAC10.0.1", "hw:1,0,1", "ArrayUAC10", "1.0.1"])
def test_loopback_timed_by_the_capture_card_is_shared(tmp_path, timer):
    clock, why = choose_clock("auto", MIC, LOOP, False, tree(tmp_path, timer=timer))
    assert clock == "shared", why
    assert f"timer_source ({timer})" in why and "capture card" in why


@pytest.mark.parametrize("timer, words", [
    (None, "kernel timer"), ("", "kernel timer"), ("hw:Headphones.0.0", "is not the capture card"),
])
def test_loopback_on_another_clock_is_separate(tmp_path, timer, words):
    clock, why = choose_clock("auto", MIC, LOOP, False, tree(tmp_path, timer=timer))
    assert clock == "separate" and words in why


def test_unknown_devices_are_separate(tmp_path):
    assert choose_clock("auto", ("dtlnd_mic", "dtlnd_mic"), ("rig_loop_play",) * 2, False, tmp_path) == \
        ("separate", "dtlnd cannot tell that input and output share a clock")
    clock, why = choose_clock("auto", MIC, ("hw:0,0", "bcm2835 Headphones: - (hw:0,0)"), False, tree(tmp_path))
    assert clock == "separate" and "different cards (card 1 [ArrayUAC10], card 0 [Headphones])" in why


def test_direct_bridge_passes_the_hop_and_counts_a_missing_one():
    stats = BlockStats()
    b = DirectBridge(stats)
    hop, out = np.arange(128, dtype=np.float32), np.ones(128, np.float32)
    b.write(hop)
    b.read(out)
    assert np.array_equal(out, hop) and stats.missed == 0
    b.read(out)  # nothing written since: silence, counted
    assert not out.any() and stats.missed == 1
    b.write(hop)
    b.reset()
    b.read(out)
    assert not out.any() and stats.missed == 2


@pytest.mark.parametrize("rate", [44100, 22050, 11025, 88200])
def test_direct_fifo_never_runs_short_and_delays_by_its_prefill(rate):
    """The duplex callback's pattern: a period's 16 kHz samples queue up, every whole hop is written, then a
    period is read.  No read may run short, and the output is the input delayed by exactly the prefill."""
    conv = converter(rate, up=False)
    assert conv is not None
    period = conv.out_size
    stats = BlockStats()
    b = DirectFifo(stats, period)
    assert period != 128 and b.prefill == 128 - math.gcd(period, 128)  # 11025 Hz: 640, five whole hops
    signal = np.arange(1, 200 * period + 1, dtype=np.float32)  # every sample told apart by its value
    queued, pos, out, got = 0, 0, np.zeros(period, np.float32), []
    for _ in range(200):
        queued += period
        while queued >= 128:
            b.write(signal[pos:pos + 128])
            pos, queued = pos + 128, queued - 128
        b.read(out)
        got.append(out.copy())
    y = np.concatenate(got)
    assert stats.missed == 0 and stats.resyncs == 0
    assert not y[:b.prefill].any()
    assert np.array_equal(y[b.prefill:], signal[:len(y) - b.prefill])


def test_xrun_advice_once_when_xruns_keep_coming():
    stats = BlockStats()
    w = XrunWatch(stats)
    assert w.note(0.0) is None
    stats.input_overflows += XRUN_LIMIT - 1
    assert w.note(1.0) is None  # under the limit
    assert w.note(XRUN_WINDOW) is None  # a new window starts from here
    stats.output_underflows += XRUN_LIMIT - 1
    assert w.note(XRUN_WINDOW + 5) is None
    stats.gaps += 1  # lost input time counts too
    line = w.note(XRUN_WINDOW + 6)
    assert line is not None and "try clock: separate" in line and f"{XRUN_LIMIT} xruns or input gaps" in line
    stats.input_overflows += 50
    assert w.note(XRUN_WINDOW + 7) is None and w.note(3 * XRUN_WINDOW) is None  # told once


def test_clock_setting_is_checked():
    assert config.load(None, {}).clock == "separate"
    assert config.load(None, {"clock": "auto"}).clock == "auto"
    with pytest.raises(ConfigError, match="clock"):
        config.load(None, {"clock": "both"})
