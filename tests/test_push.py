"""Push playback's pump under two clocks, with a simulated playback buffer and clock.

The pump (`dtlnd.push.Pump`) and the clock bridge are the real ones; the
device is a buffer of ``size`` frames that a clock of its own drains one
period at a time, ~0.1 % (and 0.3 %) faster or slower than the capture
callbacks that write and pump, with jitter.  (The test rig runs every PCM
from one JACK clock, so drift can only be simulated; the rig tests run the
pump against real PortAudio streams.)
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from dtlnd.bridge import ClockBridge
from dtlnd.constants import SHIFT
from dtlnd.measure import BlockStats
from dtlnd.push import RING_BLOCKS, Pump, PushPipeline
from dtlnd.streams import OUTPUT_UNDERFLOWED

BLOCK = SHIFT
TARGET = RING_BLOCKS * BLOCK + BLOCK // 2  # what PushPipeline gives the bridge
SIZE = 3 * BLOCK  # the device buffer with buffer_blocks: 2 (two periods beyond the one playing)


class Device:
    """A playback buffer that starts with the first write and plays one period per `tick`."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.data = np.zeros((BLOCK, 1), np.float32)
        self.queue: deque[np.ndarray] = deque()
        self.played: list[np.ndarray] = []
        self.underflows = 0
        self._ran_dry = False

    def room(self) -> int:
        return self.size - len(self.queue) * BLOCK

    def write(self) -> int:
        assert self.room() >= BLOCK, "the pump wrote with no room: PortAudio would wait"
        self.queue.append(self.data[:, 0].copy())
        ran_dry, self._ran_dry = self._ran_dry, False
        return OUTPUT_UNDERFLOWED if ran_dry else 0

    def tick(self) -> None:
        if self.queue:
            self.played.append(self.queue.popleft())
        elif self.played:  # started, and nothing to play: silence
            self.played.append(np.zeros(BLOCK, np.float32))
            self.underflows += 1
            self._ran_dry = True


def simulate(source, drift: float, seconds: float, jitter_s: float = 0.002, late: tuple[float, float] = (0, 0),
             seed: int = 1, skip_in: float = -1.0, skip_out: float = -1.0):
    """Capture callbacks (write + pump) and device periods in simulated time; the device, bridge, stats, fills.

    ``late``: (at s, by s): the capture callbacks stall once (no capture
    data is lost: they come back with the backlog).  ``skip_in`` /
    ``skip_out``: at that time one capture block is lost / the device
    plays nothing for one period (a cycle the JACK server skipped).
    """
    rng = np.random.default_rng(seed)
    stats = BlockStats(size=1)
    bridge = ClockBridge(target=TARGET, stats=stats, slew=PushPipeline.slew_blocks)
    device = Device()
    hop = np.zeros(BLOCK, np.float32)

    def fill(data: np.ndarray) -> None:
        bridge.read(hop, now_ns=now[0])
        data[:, 0] = hop

    pump = Pump(bridge, device, fill, 1.0, stats)
    period_in, period_out = BLOCK / 16000, BLOCK / (16000 * (1 + drift))
    k, j = 0, 0
    now = [0]
    due_in, due_out = rng.uniform(0, jitter_s), 0.003
    totals = []
    while due_out < seconds:
        if due_in <= due_out:
            now[0] = int(due_in * 1e9)
            if not skip_in <= due_in < skip_in + period_in:
                bridge.write(source(k), now_ns=now[0])
                assert pump.run() == 0
                totals.append(bridge.fill + SIZE - device.room())
            k += 1
            due_in = k * period_in + rng.uniform(0, jitter_s)
            if late[1] and late[0] <= due_in < late[0] + period_in:
                due_in += late[1]
        else:
            if not skip_out <= due_out < skip_out + period_out:
                device.tick()
            j += 1
            due_out = 0.003 + j * period_out
    return device, bridge, stats, np.array(totals)


@pytest.mark.parametrize("drift", [0.001, -0.001, 0.003, -0.003])
def test_drifting_clocks_keep_the_delay_bounded_with_no_underflow(drift):
    silence = np.zeros(BLOCK, np.float32)
    device, bridge, stats, totals = simulate(lambda k: silence, drift, seconds=300)
    # Unsteered, the device's queue would gain or lose 16 samples a second per 0.1 %: 4800 over 5 minutes.
    last_minute = totals[-int(60 * 16000 / BLOCK):]
    assert np.ptp(last_minute) <= 3 * BLOCK
    assert abs(last_minute.mean() - totals[200:400].mean()) < BLOCK
    assert device.underflows == 0 and stats.output_underflows == 0
    assert bridge.missed == 0 and bridge.resyncs == 0
    assert stats.dropped == 0 and stats.inserted == 0  # drift is not a step: no whole block dropped or repeated
    # It resampled the drift away, a block at a time: 0.1 % is a block every 8 s.
    assert stats.slewed >= 0.9 * abs(drift) * 300 * 16000 / BLOCK


def test_one_clock_plays_every_sample_unchanged():
    """No drift: the device plays exactly what was written, in order, after the start-up silence."""
    ramp = np.arange(16000 * 20, dtype=np.float32) + 1
    device, bridge, _, _ = simulate(lambda k: ramp[k * BLOCK:(k + 1) * BLOCK], 0.0, seconds=19, jitter_s=0.0005)
    out = np.concatenate(device.played)
    start = np.flatnonzero(out)[0]
    played = out[start:]
    assert np.array_equal(played, ramp[int(played[0]) - 1:int(played[0]) - 1 + len(played)])
    assert not bridge.engaged and bridge.missed == 0 and device.underflows == 0


@pytest.mark.parametrize("side", ["in", "out"])
def test_a_block_lost_on_one_side_is_slewed_back_with_nothing_dropped(side):
    """One clock, and one side loses a cycle: the fill steps by a block, and is resampled back in ~2 s."""
    ramp = np.arange(16000 * 12, dtype=np.float32) + 1
    kw = {"skip_in": 4.0} if side == "in" else {"skip_out": 4.0}
    device, bridge, stats, totals = simulate(lambda k: ramp[k * BLOCK:(k + 1) * BLOCK], 0.0, seconds=10,
                                             jitter_s=0.0005, **kw)
    before, after = totals[300:480].mean(), totals[-125:].mean()
    assert abs(after - before) < BLOCK / 8, (before, after)
    assert stats.slewed == 1 and stats.dropped == 0 and stats.inserted == 0
    assert device.underflows == 0 and bridge.missed == 0 and not bridge.engaged
    # Nothing was played twice or skipped but the lost block itself: the samples only rise.
    out = np.concatenate(device.played)
    out = out[np.flatnonzero(out)[0]:]
    assert np.all(np.diff(out) > 0)


def test_a_stalled_capture_callback_underflows_once_and_the_delay_comes_back():
    """Capture callbacks held back 40 ms: the device runs dry (counted), then the fill returns to where it was."""
    silence = np.zeros(BLOCK, np.float32)
    device, _, stats, totals = simulate(lambda k: silence, 0.0, seconds=10, late=(3.0, 0.040))
    assert device.underflows >= 1 and stats.output_underflows == 1  # one dry spell: PortAudio reports it once
    before, after = totals[200:300].mean(), totals[-100:].mean()
    assert abs(after - before) < BLOCK // 2, (before, after)
