"""The clock bridge under drifting clocks, with a simulated clock.

The input side runs at exactly 16 kHz, the output side ~0.1 % (and 0.3 %)
faster or slower, both with callback jitter, for minutes of simulated time:
latency must stay bounded and misses must not repeat.  (The test rig runs
every PCM from one JACK clock, so real drift can only be simulated.)
"""

from __future__ import annotations

import numpy as np
import pytest
from audio_util import read

from dtlnd import engine
from dtlnd.bridge import ClockBridge
from dtlnd.constants import SHIFT

BLOCK = SHIFT
TARGET = 2 * BLOCK + BLOCK // 2  # what AudioPipeline uses with buffer_blocks: 2


def simulate(bridge: ClockBridge, source, drift: float, seconds: float, jitter_s: float = 0.002, seed: int = 1):
    """Run writer and reader callbacks in simulated time; return fills, outputs and miss times."""
    rng = np.random.default_rng(seed)
    t_in, t_out = 0.0, 0.003
    period_in, period_out = BLOCK / 16000, BLOCK / (16000 * (1 + drift))
    due_in, due_out = t_in + rng.uniform(0, jitter_s), t_out + rng.uniform(0, jitter_s)
    out = np.zeros(BLOCK, np.float32)
    fills, outputs, misses, seen = [], [], [], []
    k = 0
    while t_out < seconds:
        if due_in <= due_out:
            bridge.write(source(k), now_ns=int(due_in * 1e9))
            k += 1
            t_in += period_in
            due_in = t_in + rng.uniform(0, jitter_s)
        else:
            fills.append(bridge.fill)
            before = bridge.missed
            bridge.read(out, now_ns=int(due_out * 1e9))
            if bridge.missed != before:
                misses.append(t_out)
            outputs.append(out.copy())
            seen.append(bridge.fill_seen)
            t_out += period_out
            due_out = t_out + rng.uniform(0, jitter_s)
    bridge.seen = np.array(seen)  # the fills the bridge judged (corrected for the writer's phase)
    return np.array(fills), np.concatenate(outputs), misses


@pytest.mark.parametrize("drift", [0.001, -0.001, 0.003, -0.003])
def test_drifting_clocks_keep_latency_bounded_and_no_repeating_misses(drift):
    bridge = ClockBridge(target=TARGET)
    silence = np.zeros(BLOCK, np.float32)
    fills, _, misses = simulate(bridge, lambda k: silence, drift, seconds=300)
    # Without correction the fill would wander by 16 samples/s per 0.1 %:
    # 4800 samples (300 ms) over these 5 minutes at 0.1 %.
    last_minute = fills[-int(60 * 16000 / BLOCK):]
    assert last_minute.max() - TARGET < 2 * BLOCK
    assert TARGET - last_minute.min() < BLOCK + BLOCK // 2
    # The fill the bridge judges (phase-corrected) sits on its home, which is near the target.
    assert abs(bridge.seen[-len(last_minute):].mean() - bridge.home) < 8
    assert abs(bridge.home - TARGET) <= BLOCK
    assert not misses, f"reads found samples missing at {misses[:5]} s"
    assert bridge.resyncs == 0
    assert bridge.engaged


def test_same_clock_passes_samples_unchanged():
    """No drift, no resampling: the reader plays exactly what was written."""
    bridge = ClockBridge(target=TARGET)
    ramp = np.arange(16000 * 20, dtype=np.float32)
    _, out, misses = simulate(bridge, lambda k: ramp[k * BLOCK:(k + 1) * BLOCK], 0.0, seconds=19, jitter_s=0.0005)
    start = np.flatnonzero(out)[0]
    played = out[start:]
    assert np.array_equal(played, ramp[int(played[0]):int(played[0]) + len(played)])
    assert not misses and not bridge.engaged


def test_resampling_under_drift_keeps_the_signal_clean():
    """While correcting 0.1 % drift the bridge resamples; a 440 Hz tone stays a clean tone."""
    bridge = ClockBridge(target=TARGET)
    tone = np.sin(2 * np.pi * 440 * np.arange(16000 * 40) / 16000).astype(np.float32)
    _, out, misses = simulate(bridge, lambda k: tone[k * BLOCK:(k + 1) * BLOCK], 0.001, seconds=35)
    assert not misses
    seg = out[-16000 * 5:].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
    peak = int(np.argmax(spectrum))
    in_tone = spectrum[peak - 10:peak + 11].sum()
    assert abs(peak / 5 - 440 / (1 + 0.001)) < 1.5  # the tone, time-stretched by the drift
    assert 10 * np.log10(in_tone / (spectrum.sum() - in_tone)) > 40


def test_late_writer_costs_silence_not_latency():
    """A block that misses its deadline is played as silence and the latency stays put."""
    bridge = ClockBridge(target=TARGET)
    one = np.ones(BLOCK, np.float32)
    out = np.zeros(BLOCK, np.float32)
    for _ in range(3):
        bridge.write(one)
    for _ in range(50):
        bridge.read(out)
        bridge.write(one)
    assert bridge.missed == 0
    for _ in range(3):  # the writer stalls for three blocks
        bridge.read(out)
    assert bridge.missed >= 1 and out[-1] == 0.0
    for _ in range(3):  # and comes back with the late blocks
        bridge.write(one)
    for _ in range(50):
        bridge.write(one)
        bridge.read(out)
    assert out.min() == 1.0
    assert abs(bridge.fill - TARGET) <= 2 * BLOCK


def test_engine_behind_drifting_clocks(models_dir, audio_dir):
    """The real engine in the writer's place, 0.1 % drift, 3 minutes: no misses, bounded delay."""
    proc = engine.build("ns", model_dir=models_dir)
    speech = read(audio_dir / "airconditioning.wav")
    hops = len(speech) // BLOCK
    hop_out = np.zeros(BLOCK, np.float32)

    def source(k: int) -> np.ndarray:
        j = k % hops
        proc.process_hop(speech[j * BLOCK:(j + 1) * BLOCK], None, hop_out)
        return hop_out

    bridge = ClockBridge(target=TARGET)
    fills, out, misses = simulate(bridge, source, -0.001, seconds=180)
    assert not misses
    assert np.ptp(fills[-7500:]) < 3 * BLOCK
    assert np.sqrt(np.mean(out[-16000 * 10:] ** 2)) > 0.01  # the enhanced speech comes through


# -- one clock, with hiccups: whole-block steps, never resampling ----------------------------


def one_clock(bridge: ClockBridge, seconds: float, writer_off=(), reader_off=(), late=(), flips: float = 0.0):
    """Writer and reader on one 8 ms clock; return the output and the fill before each read.

    ``writer_off`` / ``reader_off``: (start, end) seconds in which that side loses its callbacks
    for good (a stall, an xrun).  ``late``: (start, end) in which the writer's callbacks are held
    back and then delivered in a burst (a CPU hog: the data is late, not lost).  ``flips``: the
    share of cycles in which the reader runs 1 ms before the writer instead of 1 ms after it.
    The writer writes a ramp, so the output says exactly which input sample it is.
    """
    rng = np.random.default_rng(5)
    out = np.zeros(BLOCK, np.float32)
    outs, fills, held = [], [], 0
    for k in range(int(seconds * 16000 / BLOCK)):
        t = k * BLOCK / 16000
        ramp = np.arange(k * BLOCK, (k + 1) * BLOCK, dtype=np.float32) + 1
        reader_first = rng.random() < flips
        for side in ("reader", "writer") if reader_first else ("writer", "reader"):
            if side == "writer":
                if any(a <= t < b for a, b in late):
                    held += 1
                elif not any(a <= t < b for a, b in writer_off):
                    for j in range(held, 0, -1):
                        bridge.write(ramp - j * BLOCK, now_ns=int(t * 1e9))
                    held = 0
                    bridge.write(ramp, now_ns=int(t * 1e9))
            elif not any(a <= t < b for a, b in reader_off):
                fills.append((t, bridge.fill))
                bridge.read(out, now_ns=int((t + (-0.001 if reader_first else 0.001)) * 1e9))
                outs.append(out.copy())
    return np.concatenate(outs), np.array(fills)


@pytest.mark.parametrize("case, kwargs, dropped, inserted", [
    ("reader stalls 100 ms", {"reader_off": [(3.0, 3.1)]}, True, False),
    ("reader stalls 300 ms", {"reader_off": [(3.0, 3.3)]}, True, False),
    ("writer loses 50 ms", {"writer_off": [(3.0, 3.05)]}, False, True),
    ("writer loses 200 ms", {"writer_off": [(3.0, 3.2)]}, False, True),
])
def test_a_step_in_the_fill_is_undone_by_whole_blocks_within_a_second(case, kwargs, dropped, inserted):
    """A lasting step (one side lost time) is undone by dropping or repeating blocks, not by resampling."""
    bridge = ClockBridge(target=TARGET)
    out, fills = one_clock(bridge, 6.0, **kwargs)
    t, f = fills[:, 0], fills[:, 1]
    before = f[(t > 2.0) & (t < 3.0)]
    assert np.all(before == before[0]), "the fill moved before the hiccup"
    assert bridge.resyncs == 0
    after = f[t >= 4.1]  # 1 s after the hiccup began (it lasts at most 0.3 s)
    assert np.all(np.abs(after - TARGET) <= 160), f"{case}: fill {after.min()}..{after.max()} 1 s later"
    assert (bridge.dropped > 0) == dropped and (bridge.inserted > 0) == inserted, (bridge.dropped, bridge.inserted)
    assert not bridge.engaged and bridge.ratio == 1.0, "the drift loop resampled on one clock"
    # Whatever is played is the input, sample for sample: whole stretches of the ramp, steps only between.
    played = out[out != 0]
    steps = np.flatnonzero(np.diff(played) != 1)
    assert len(steps) <= 3, f"{len(steps)} discontinuities"
    assert played[-1] == played[-2] + 1


def test_callback_order_flipping_on_one_clock_is_not_drift():
    """Which callback runs first in a cycle moves the fill a reader sees by a block: never corrected."""
    bridge = ClockBridge(target=TARGET)
    out, _ = one_clock(bridge, 30.0, flips=0.3)
    assert not bridge.engaged and bridge.ratio == 1.0
    assert bridge.dropped == bridge.inserted == bridge.missed == bridge.resyncs == 0
    played = out[out != 0]
    assert np.array_equal(played, np.arange(played[0], played[0] + len(played), dtype=np.float32))


def test_late_callbacks_are_not_steps():
    """A writer held back 40 ms and then catching up (a CPU hog) costs at most misses, never a block step."""
    bridge = ClockBridge(target=TARGET)
    late = [(2.0 + i, 2.04 + i) for i in range(5)]
    _, fills = one_clock(bridge, 8.0, late=late)
    assert bridge.dropped == 0 and bridge.inserted == 0 and bridge.resyncs == 0
    assert not bridge.engaged
    t, f = fills[:, 0], fills[:, 1]
    assert np.all(f[(t > 7.1)] == f[(t > 1.0) & (t < 2.0)][0])


def test_lost_time_is_counted_as_gaps():
    """LostTime: a stall with no backlog is a gap of its length; late callbacks and drift are not."""
    from dtlnd.audio import LostTime
    from dtlnd.measure import BlockStats

    def run(rate: int, period: int, times_s) -> BlockStats:
        st = BlockStats(size=1)
        lt = LostTime(rate, st)
        for t in times_s:
            lt.note(int(t * 1e9), period)
        return st

    period = 128
    regular = np.arange(3000) * period / 16000  # 24 s of callbacks
    rng = np.random.default_rng(3)
    jittered = regular + rng.uniform(0, 0.004, len(regular))
    st = run(16000, period, jittered)
    assert st.gaps == 0 and st.gap_samples == 0
    # A callback 30 ms late, then the backlog at once: no data lost.
    late = regular.copy()
    late[1000:1004] = late[1004]
    assert run(16000, period, late).gaps == 0
    # Every callback 15 ms late for 0.3 s (a hog: one whole window), then on time again: the data came, late.
    held = regular.copy()
    held[990:1030] += 0.015
    assert run(16000, period, held).gaps == 0
    # The device 0.3 % slow against the system clock: drift, not loss.
    assert run(16000, period, regular * 1.003).gaps == 0
    # Three 200 ms stalls whose audio never comes (the process was stopped).
    stalled = regular.copy()
    for k in (700, 1400, 2100):
        stalled[k:] += 0.2
    st = run(16000, period, stalled)
    assert st.gaps == 3
    assert abs(st.gap_samples - 3 * 3200) <= 3 * period, st.gap_samples
    # The same at 48 kHz with 384-frame periods: counted in 16 kHz samples.
    st = run(48000, 3 * period, stalled)
    assert st.gaps == 3 and abs(st.gap_samples - 3 * 3200) <= 3 * period
    # A 200 ms stall whose last block shows a window later (seen on the rig: 192 ms, then 8): one gap.
    tail = regular.copy()
    tail[700:] += 0.2 - period / 16000
    tail[740:] += period / 16000
    st = run(16000, period, tail)
    assert st.gaps == 1 and abs(st.gap_samples - 3200) <= period // 4, (st.gaps, st.gap_samples)
    # One period whose frames never came (a JACK cycle skipped for the capture), amid the jitter above.
    skipped = jittered.copy()
    skipped[1500:] += period / 16000
    for rate in (16000, 48000):
        st = run(rate, period * rate // 16000, skipped)
        assert st.gaps == 1 and abs(st.gap_samples - period) <= period // 4, (rate, st.gap_samples)


def one_clock_44k1(bridge: ClockBridge, seconds: float, reader_first: float, queued: int = 0,
                   seed: int = 3) -> np.ndarray:
    """As `one_clock` with 44.1 kHz's 10 ms periods: 160 samples a period, written as the hops they complete.

    The writer queues 160 samples a period and writes each whole hop (one, or two every fourth
    period), as `AudioPipeline` does; the reader reads 160.  ``reader_first``: the share of
    periods in which the reader runs 0.1 ms before the writer (9.9 ms after its last write)
    instead of 1 ms after it.  ``queued``: samples in the writer's queue at the start (which
    period of the pattern primes the bridge).  Returns the output (a ramp of the input's
    sample numbers, 0 while priming).
    """
    rng = np.random.default_rng(seed)
    call = 160
    out = np.zeros(call, np.float32)
    outs, n = [], 0
    for k in range(int(seconds * 100)):
        t = k / 100
        first = rng.random() < reader_first
        for side in ("reader", "writer") if first else ("writer", "reader"):
            if side == "writer":
                queued += call
                while queued >= BLOCK:
                    bridge.write(np.arange(n, n + BLOCK, dtype=np.float32) + 1, now_ns=int(t * 1e9))
                    n += BLOCK
                    queued -= BLOCK
            else:
                bridge.read(out, now_ns=int((t + (-0.0001 if first else 0.001)) * 1e9))
                outs.append(out.copy())
    return np.concatenate(outs)


@pytest.mark.parametrize("reader_first, queued", [(0.0, 0), (1.0, 0), (1.0, 96), (1.0, 128), (0.3, 0), (0.3, 64)])
def test_ten_ms_calls_of_one_or_two_hops_on_one_clock_are_not_steps(reader_first, queued):
    """At 44.1 kHz (`dtlnd.resample.Rational`: 160 samples a call) the fill a reader sees moves by up to
    two hops within a period, and by the callbacks' order: nothing is dropped, repeated, missed or
    resampled, whichever callback runs first, at the start (home is learned then) or at random."""
    # AudioPipeline's target at 44.1 kHz: a hop more for the two-hop writes, 32 samples for the reads of 160.
    bridge = ClockBridge(target=TARGET + BLOCK + 32, write_size=160)
    out = one_clock_44k1(bridge, 30.0, reader_first, queued)
    assert bridge.dropped == bridge.inserted == bridge.missed == bridge.resyncs == 0
    assert not bridge.engaged and bridge.ratio == 1.0
    played = out[out != 0]
    assert np.array_equal(played, np.arange(played[0], played[0] + len(played), dtype=np.float32))


@pytest.mark.parametrize("drift", [0.001, -0.001])
def test_ten_ms_calls_on_drifting_clocks_keep_the_fill_bounded_without_misses(drift):
    """44.1 kHz's calls (160 samples, written as one or two hops) with the reader's clock 0.1 % off, 5 min:
    the drift loop takes the fill back to home, with no miss, drop or repeat."""
    bridge = ClockBridge(target=TARGET + BLOCK + 32, write_size=160)
    rng = np.random.default_rng(4)
    out = np.zeros(160, np.float32)
    queued, fills = 0, []
    k_w = k_r = 0
    due_w, due_r = 0.0, 0.0043
    while due_r < 300.0:
        if due_w <= due_r:
            queued += 160
            while queued >= BLOCK:
                bridge.write(np.zeros(BLOCK, np.float32), now_ns=int(due_w * 1e9))
                queued -= BLOCK
            k_w += 1
            due_w = k_w * 0.01 + rng.uniform(0, 0.001)  # callbacks jitter; the clock does not
        else:
            fills.append(bridge.fill_seen)
            bridge.read(out, now_ns=int(due_r * 1e9))
            k_r += 1
            due_r = 0.0043 + k_r * 0.01 / (1 + drift) + rng.uniform(0, 0.001)
    last_minute = np.array(fills[-6000:])
    assert bridge.missed == bridge.dropped == bridge.inserted == bridge.resyncs == 0
    assert bridge.engaged
    assert abs(last_minute.mean() - bridge.home) < 8, (last_minute.mean(), bridge.home)
