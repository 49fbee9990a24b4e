"""Reference alignment on the real-time path: the aligned hop processor and its estimator worker.

"Live" runs the hop path as ``dtlnd run`` drives it, with the estimator
polled every 31 hops (0.25 s) as its worker thread does; the worker itself
is tested too.  Recordings and shifts as in tests/test_align.py.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

import numpy as np
import pytest
from align_util import RATE, live, settled, shifted
from audio_util import rms_dbfs, traced

from dtlnd import delayline, engine

# -- live: the hop path and its estimator ------------------------------------------------------


def test_live_alignment_converges_with_the_reference_300_ms_ahead(aec, farend):
    mic, lpb = farend
    mic3, far3 = np.tile(mic, 3), shifted(np.tile(lpb, 3), -300)
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
    proc.reset()
    y = live(proc, mic3, far3)
    a = proc.alignment
    t = settled(y)
    print(f"live, 300 ms ahead: settled after {t:.1f} s; {a.describe()}; estimator {a.cpu_per_s:.4f} CPU s/s")
    assert t <= 5.0
    assert abs(a.lag_ms - 335.4) <= 1.0 and a.state == "locked"
    assert abs(a.lag_ms - a.applied_ms - 40) <= 4.0 and a.mic_delay_ms == 0
    assert rms_dbfs(y[5 * RATE:]) <= -65
    aec.reset()


def test_live_reference_behind_the_echo_delays_the_microphone(aec, farend):
    mic, lpb = farend
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
    proc.reset()
    y = live(proc, np.tile(mic, 2), shifted(np.tile(lpb, 2), 40))
    a = proc.alignment
    assert a.applied_ms == 0 and abs(a.mic_delay_ms - 45) <= 4.0
    assert proc.delay == aec.delay + round(a.mic_delay_ms * RATE / 1000)  # reported as latency
    assert "latency" in a.describe()
    assert settled(y) <= 5.0
    aec.reset()


def test_live_jump_reconverges_within_5_s(aec, farend):
    mic, lpb = farend
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
    proc.reset()
    y = live(proc, np.concatenate([mic, mic]), np.concatenate([shifted(lpb, -100), shifted(lpb, -250)]))
    after = settled(y[len(mic):])
    print(f"live jump 100 -> 250 ms: settled {after:.1f} s after it; {proc.alignment.describe()}")
    assert after <= 5.0
    assert abs(proc.alignment.lag_ms - 285.4) <= 1.0
    aec.reset()


def test_live_as_recorded_and_near_end_are_left_alone(aec, farend, nearend):
    for mic, lpb in (farend, nearend):
        proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
        proc.reset()
        y = live(proc, mic, lpb)
        aec.reset()
        bare = np.zeros_like(y)
        for k in range(len(y) // 128):
            s = slice(k * 128, (k + 1) * 128)
            aec.process_hop(mic[s], lpb[s], bare[s])
        assert np.array_equal(y, bare), proc.alignment.describe()
        assert proc.alignment.applied_ms == 0 and proc.alignment.mic_delay_ms == 0
        aec.reset()


def test_delay_line_delays_whole_hops_and_crossfades_a_change():
    line = delayline.HopDelay(10)
    x = np.arange(128 * 40, dtype=np.float32)
    out = np.zeros_like(x)
    line.set(3)
    for k in range(20):
        out[k * 128:(k + 1) * 128] = line.push(x[k * 128:(k + 1) * 128])
    assert np.array_equal(out[3 * 128:20 * 128], x[:17 * 128])
    line.target = 5
    for k in range(20, 40):
        out[k * 128:(k + 1) * 128] = line.push(x[k * 128:(k + 1) * 128])
    fade = out[20 * 128:21 * 128]
    old, new = x[17 * 128:18 * 128], x[15 * 128:16 * 128]
    w = (np.arange(128) + 0.5) / 128
    assert np.allclose(fade, old * (1 - w) + new * w)
    assert np.array_equal(out[21 * 128:], x[16 * 128:35 * 128])
    assert np.array_equal(line.read(0, 40), x)  # the raw input, for the estimator
    with pytest.raises(ValueError):
        delayline.HopDelay(delayline.MAX_HOPS + 1)
    with pytest.raises(ValueError):
        line.set(11)


def test_feed_and_delay_lines_allocate_nothing_on_the_audio_path(aec, farend):
    """The whole aligned hop, delay changes included, against the same loop around a no-op."""
    mic, lpb = farend
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
    proc.reset()
    hops = [(mic[i:i + 128].copy(), lpb[i:i + 128].copy()) for i in range(0, 300 * 128, 128)]
    out = np.zeros(128, np.float32)
    for m, f in hops[:20]:
        proc.process_hop(m, f, out)
    steady = hops[20:]
    targets = [(k, 100 + k % 7, k % 5) for k in range(0, len(steady), 40)]  # jumps, as the worker sets them

    def blocks(step) -> None:
        i = 0
        for t in targets:
            proc.far_line.target, proc.mic_line.target = t[1], t[2]
            for m, f in steady[i:t[0]]:
                step(m, f, out)
            i = t[0]

    noop = lambda m, f, o: None  # noqa: E731
    loop_kept, loop_peak = map(max, zip(*(traced(lambda: blocks(noop)) for _ in range(3))))
    kept, peak = map(min, zip(*(traced(lambda: blocks(proc.process_hop)) for _ in range(3))))
    assert np.any(proc.mic_line.read(0, delayline.SIZE) != 0)  # the feed ran
    assert kept <= loop_kept, f"{kept - loop_kept} bytes kept by the aligned hop path"
    assert peak <= loop_peak, f"{peak - loop_peak} bytes allocated on the aligned hop path"
    aec.reset()


# -- the worker thread and its warnings ---------------------------------------------------------


def _aligner(lead=40.0):
    far_line, mic_line = delayline.HopDelay(125), delayline.HopDelay(25)
    return (mic_line, far_line), delayline.Aligner(far_line, mic_line, lead, 1000.0)


def _feed(lines, aligner, mic, far):
    for k in range(len(mic) // 128):
        s = slice(k * 128, (k + 1) * 128)
        lines[0].push(mic[s])
        lines[1].push(far[s])
        if k % 31 == 30:
            aligner.poll()


def test_constant_reference_warns_once(farend, caplog):
    mic, _ = farend
    lines, a = _aligner()
    with caplog.at_level(logging.WARNING, "dtlnd"):
        _feed(lines, a, np.tile(mic, 2), np.zeros(2 * len(mic), np.float32))
    warnings = [r.getMessage() for r in caplog.records if "constant" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert a.far_line.target == 0 and a.state == "searching"


def test_uncorrelated_reference_warns_once(farend, nearend, caplog):
    _, far_lpb = farend
    n = min(len(far_lpb), len(nearend[0]))
    with caplog.at_level(logging.WARNING, "dtlnd"):
        lines, a = _aligner()
        _feed(lines, a, np.tile(nearend[0][:n], 3), np.tile(far_lpb[:n], 3))
    warnings = [r.getMessage() for r in caplog.records if "does not hear it" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert a.lag_ms is None and a.far_line.target == 0


def test_worker_thread_aligns_and_ends_with_its_processor(aec, farend):
    mic, lpb = farend
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40)
    proc.reset()
    far = shifted(lpb, -300)
    out = np.zeros(128, np.float32)
    for k in range(4 * RATE // 128):  # 4 s, fed at ~4x real time: the worker keeps up
        s = slice(k * 128, (k + 1) * 128)
        proc.process_hop(mic[s], far[s], out)
        if k % 8 == 7:
            time.sleep(0.016)
    deadline = time.monotonic() + 5
    while proc.alignment.lag_ms is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.alignment.lag_ms is not None and abs(proc.alignment.lag_ms - 335.4) <= 1.0
    thread = proc.alignment._thread
    assert thread is not None and thread.is_alive()
    gone = weakref.ref(proc.alignment)
    del proc
    time.sleep(2 * delayline.POLL_S)
    assert gone() is None and not thread.is_alive()
    assert "dtlnd-align" not in [t.name for t in threading.enumerate()]
    aec.reset()


def test_aec_ns_chain_uses_the_same_alignment(models_dir, farend):
    mic, lpb = farend
    chain = engine.build("aec+ns", model_dir=models_dir)
    proc = delayline.wrap(chain, "aec+ns", "auto", 1000, 40, start=False)
    proc.reset()
    y = live(proc, np.tile(mic, 2), shifted(np.tile(lpb, 2), -300))
    assert proc.delay == chain.delay
    assert abs(proc.alignment.lag_ms - 335.4) <= 1.0
    assert settled(y) <= 5.0


def test_fixed_ref_delay_and_zero(aec, farend):
    mic, lpb = farend
    assert delayline.wrap(aec, "aec", 0.0, 1000, 40) is aec  # 0: the reference as it comes
    assert delayline.wrap(aec, "ns", "auto", 1000, 40) is aec
    proc = delayline.wrap(aec, "aec", 296.0, 1000, 40)
    proc.reset()
    y = live(proc, mic, shifted(lpb, -300), poll_every=10 ** 9)
    assert proc.alignment.describe() == "align fixed: reference +296 ms"
    assert rms_dbfs(y[RATE:]) <= -65  # aligned from the first hop
    proc = delayline.wrap(aec, "aec", -48.0, 1000, 40)
    assert proc.delay == aec.delay + 6 * 128
    assert proc.alignment.describe() == "align fixed: reference +0 ms, mic +48 ms (latency)"
    aec.reset()


def test_non_finite_input_does_not_stop_the_estimator(aec, farend):
    """A burst of NaN and inf (a broken driver) costs the estimator no more than the burst itself.

    Zeroed before decimation, it leaves the windows around it usable: the
    lag is found in the same 3.2 s as without it (NaN would blank every
    window that holds it, 2 s each).
    """
    mic, lpb = farend
    mic2, far2 = mic.copy(), shifted(lpb, -300)
    mic2[RATE:RATE + 4000] = np.nan
    far2[RATE + 2000:RATE + 6000] = np.inf
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
    proc.reset()
    n = int(3.2 * RATE)
    live(proc, mic2[:n], far2[:n])
    assert proc.alignment.lag_ms is not None and abs(proc.alignment.lag_ms - 335.4) <= 1.0
    assert proc.alignment.state == "locked"
    aec.reset()


def test_silent_reference_warns_once_after_20_s(nearend, caplog):
    """Near-end talk with the reference at -68 dBFS (nothing playing): one warning, nothing moves."""
    mic, lpb = nearend
    with caplog.at_level(logging.WARNING, "dtlnd"):
        lines, a = _aligner()
        _feed(lines, a, np.tile(mic, 3)[:25 * RATE], np.tile(lpb, 3)[:25 * RATE])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "silent for 20 s while the microphone is active" in warnings[0], warnings
    assert a.state == "searching" and a.far_line.target == 0 and a.mic_line.target == 0


def test_live_double_talk_still_finds_the_echo(aec, farend, nearend):
    echo, lpb = farend
    mic = echo + nearend[0][:len(echo)]
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
    proc.reset()
    live(proc, mic, shifted(lpb, -200))
    assert abs(proc.alignment.lag_ms - 235.4) <= 1.0 and proc.alignment.applied_ms == 192
    aec.reset()


def test_live_drift_is_followed_in_small_steps(aec, farend):
    """100 -> 160 ms over 33 s: re-centred in steps under 96 ms, which only crossfade (no state reset)."""
    mic, lpb = np.tile(farend[0], 3), np.tile(farend[1], 3)
    n = len(mic)
    far = np.interp(np.arange(n) + np.linspace(100, 160, n) * RATE / 1000, np.arange(n), lpb).astype(np.float32)
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
    proc.reset()
    y = live(proc, mic, far)
    a = proc.alignment
    print(f"live drift 100 -> 160 ms: residual after 5 s {rms_dbfs(y[5 * RATE:]):.1f} dBFS, "
          f"{a.tracker.changes} changes; {a.describe()}")
    assert a.tracker.changes == 2 and a.applied_ms == 128
    assert rms_dbfs(y[5 * RATE:]) <= -68
    aec.reset()


def test_wrapper_finds_the_echo_canceller_and_forwards_the_rest(aec):
    """Behind another wrapper (as a suppression limit wraps the engine) and for what it does not own."""

    class Outer:
        def __init__(self, inner):
            self.inner, self.channels, self.delay = inner, 2, inner.delay
            self.label, self.nonfinite = "outer", 3
            self.process_hop = inner.process_hop

        def reset(self):
            self.inner.reset()

    proc = delayline.AlignedProcessor(Outer(aec), "auto", 1000, 40, start=False)
    assert delayline.echo_stage(proc) is aec
    assert (proc.label, proc.nonfinite) == ("outer", 3)
    with pytest.raises(AttributeError):
        proc.no_such_thing  # noqa: B018
    with pytest.raises(TypeError, match="no model pair"):
        delayline.AlignedProcessor(object(), "auto", 1000, 40, start=False)


def test_estimator_starts_over_after_a_stall_that_wrapped_the_lines(aec, farend):
    """The worker was held up (SIGSTOP, a busy CPU) longer than the 2 s the lines hold: told so, it
    takes all they hold (not the few hops the wrapped position suggests), keeps the alignment it
    had, and goes on estimating."""
    mic, lpb = farend
    far = shifted(lpb, -300)
    proc = delayline.AlignedProcessor(aec, "auto", 1000, 40, start=False)
    proc.reset()
    a = proc.alignment
    out = np.zeros(128, np.float32)
    stall = range(400, 400 + delayline.SIZE + 60)  # hops with no look: more than the lines hold
    for k in range(len(mic) // 128):
        s = slice(k * 128, (k + 1) * 128)
        proc.process_hop(mic[s], far[s], out)
        if k == stall[-1]:
            before = a.audio_s
            a.poll(overrun=True)
            assert a.audio_s - before == pytest.approx((delayline.SIZE - 8) * 128 / RATE)
        elif k % 31 == 30 and k not in stall:
            a.poll()
    assert a.lag_ms is not None and abs(a.lag_ms - 335.4) <= 1.0 and a.state == "locked"
    assert a.tracker.changes == 1 and a.applied_ms == 296
    aec.reset()
