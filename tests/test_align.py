"""Reference alignment: the estimator, the delay lines and the aligned echo canceller, on real recordings.

The AEC-challenge takes in shared/audio have the echo 35 ms behind the
reference.  "Earlier" / "later" below shift the reference against the
microphone, as a real reference path (ALSA buffers, USB, Bluetooth) does.
Offline (`dtlnd process`) aligns with look-ahead; "live" runs the real-time
hop path with the estimator polled every 31 hops (0.25 s), as its worker does.
"""

from __future__ import annotations

import logging
import threading
import time
import tracemalloc
import weakref

import numpy as np
import pytest
from audio_util import dtlnd, read, rms_dbfs

from dtlnd import align, config, delayline, engine
from dtlnd.errors import ConfigError
from dtlnd.offline import enhance

RATE = 16000
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


@pytest.fixture(scope="module")
def farend(audio_dir):
    return take(audio_dir, FAR)


@pytest.fixture(scope="module")
def nearend(audio_dir):
    return take(audio_dir, NEAR)


@pytest.fixture(scope="module")
def aec(models_dir):
    return engine.build("aec", model_dir=models_dir)


def offline(aec, mic, far, ref_delay="auto"):
    """What ``dtlnd process --mode aec --ref-delay REF_DELAY`` writes, and what it reported."""
    if ref_delay == 0:
        return enhance(engine.BlockStream(aec), mic, far), ""
    a = align.align_reference(mic, far, ref_delay)
    return enhance(engine.BlockStream(aec), mic, a.far, a.resets), a.text


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


# -- the estimator ----------------------------------------------------------------------------


@pytest.mark.parametrize("later", [-400, -200, 0, 40])
def test_estimator_finds_the_echo_lag(farend, later):
    mic, lpb = farend
    found = align.align_file(mic, shifted(lpb, later), 40, 1000)
    assert found.lag is not None
    assert abs(align.samples_to_ms(found.lag) - (35.4 - later)) <= 1.0
    assert found.usable >= found.windows - 2


def test_estimator_does_not_move_on_near_end_talk_or_unrelated_signals(farend, nearend):
    near_mic, near_lpb = nearend
    _, far_lpb = farend
    n = min(len(near_mic), len(far_lpb))
    rng = np.random.default_rng(0)
    for mic, far in [(near_mic, near_lpb),  # near-end single talk: the reference is near silent
                     (near_mic[:n], far_lpb[:n]),  # both active, unrelated (wrong reference)
                     ((0.05 * rng.standard_normal(n)).astype(np.float32), far_lpb[:n])]:
        found = align.align_file(mic, far, 40, 1000)
        assert found.lag is None and found.schedule == (), found.describe()
        assert found.usable == 0


def test_plan_delays_the_reference_or_else_the_microphone():
    lead = ms(40)
    assert align.plan(ms(335), lead, 125, 25) == (round(ms(295) / 128), 0)
    assert align.plan(ms(-5), lead, 125, 25) == (0, round(ms(45) / 128))
    assert align.plan(ms(-900), lead, 125, 25) == (0, 25)  # bounded: 200 ms of microphone delay
    assert align.plan(ms(5000), lead, 125, 25) == (125, 0)


# -- offline: the cases ----------------------------------------------------------------


@pytest.mark.parametrize("later", [-200, -400, 40])
def test_far_end_single_talk_is_cancelled_at_any_offset(aec, farend, later):
    mic, lpb = farend
    far = shifted(lpb, later)
    raw, _ = offline(aec, mic, far, ref_delay=0)
    assert rms_dbfs(raw) > -50  # misaligned, echo cancellation fails: the case is real
    y, said = offline(aec, mic, far)
    print(f"reference {later:+d} ms: residual {rms_dbfs(y):.1f} dBFS (unaligned {rms_dbfs(raw):.1f}); {said}")
    assert rms_dbfs(y) <= -60
    assert "echo lag" in said


def test_recording_as_it_is_stays_unchanged(aec, farend):
    mic, lpb = farend
    y0, _ = offline(aec, mic, lpb, ref_delay=0)
    y, said = offline(aec, mic, lpb)
    assert np.array_equal(y, y0), said  # the lead it has (35 ms) is inside the hold band: nothing moves
    assert rms_dbfs(y) <= -70
    assert "shifted 0 ms" in said


@pytest.mark.parametrize("later", [-200, -400, 0, 40])
def test_near_end_talker_is_kept(aec, nearend, later):
    mic, lpb = nearend
    y, said = offline(aec, mic, shifted(lpb, later))
    print(f"near end, reference {later:+d} ms: out {rms_dbfs(y):.2f} dBFS, mic {rms_dbfs(mic):.2f}; {said}")
    assert abs(rms_dbfs(y) - rms_dbfs(mic)) <= 1.0
    assert "no echo path found" in said


def test_double_talk_echo_no_worse_than_as_recorded(aec, farend, nearend):
    """Echo left in double talk: output of (echo + talker) minus output of the talker alone.

    Both runs see the same (aligned) reference, so what differs is what the
    echo added; as recorded, that is the yardstick.
    """
    echo, lpb = farend
    talker = nearend[0][:len(echo)]
    mic = echo + talker

    def echo_left(far):
        both, said = offline(aec, mic, far)
        alone = enhance(engine.BlockStream(aec), talker, align.align_reference(mic, far, "auto").far)
        return rms_dbfs(both - alone), said

    base, _ = echo_left(lpb)
    for later in (-200, -400, 40):
        left, said = echo_left(shifted(lpb, later))
        unaligned = rms_dbfs(offline(aec, mic, shifted(lpb, later), 0)[0]
                             - enhance(engine.BlockStream(aec), talker, shifted(lpb, later)))
        print(f"double talk, reference {later:+d} ms: echo left {left:.1f} dB (as recorded {base:.1f}, "
              f"unaligned {unaligned:.1f}); {said}")
        assert left <= base + 0.5
        assert "echo lag" in said


def test_a_jump_of_the_delay_is_tracked(aec, farend):
    """100 ms early, then (a Bluetooth speaker reconnects) 250 ms: re-aligned well within 5 s."""
    mic, lpb = farend
    mic2 = np.concatenate([mic, mic])
    far = np.concatenate([shifted(lpb, -100), shifted(lpb, -250)])
    y, said = offline(aec, mic2, far)
    jump = len(mic) / RATE
    after = settled(y[len(mic):])
    print(f"jump at {jump:.2f} s: residual settled {after:.1f} s after it; {said}")
    assert said.count("ms from") == 2
    assert after <= 5.0
    assert rms_dbfs(y[len(mic) + 5 * RATE:]) <= -65


def test_constant_reference_passes_audio_as_today(aec, farend):
    mic, _ = farend
    for value in (0.0, 0.25):
        far = np.full(len(mic), value, np.float32)
        y, said = offline(aec, mic, far)
        y0, _ = offline(aec, mic, far, ref_delay=0)
        assert np.array_equal(y, y0)
        assert "constant" in said


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
        line.push(x[k * 128:(k + 1) * 128], out[k * 128:(k + 1) * 128])
    assert np.array_equal(out[3 * 128:20 * 128], x[:17 * 128])
    line.target = 5
    for k in range(20, 40):
        line.push(x[k * 128:(k + 1) * 128], out[k * 128:(k + 1) * 128])
    fade = out[20 * 128:21 * 128]
    old, new = x[17 * 128:18 * 128], x[15 * 128:16 * 128]
    w = (np.arange(128) + 0.5) / 128
    assert np.allclose(fade, old * (1 - w) + new * w)
    assert np.array_equal(out[21 * 128:], x[16 * 128:35 * 128])
    with pytest.raises(ValueError):
        delayline.HopDelay(delayline.MAX_HOPS + 1)


def _traced(run) -> tuple[int, int]:
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current - base, peak - base


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
    loop_kept, loop_peak = map(max, zip(*(_traced(lambda: blocks(noop)) for _ in range(3))))
    kept, peak = map(min, zip(*(_traced(lambda: blocks(proc.process_hop)) for _ in range(3))))
    assert np.any(proc.ring.mic != 0)  # the feed ran
    assert kept <= loop_kept, f"{kept - loop_kept} bytes kept by the aligned hop path"
    assert peak <= loop_peak, f"{peak - loop_peak} bytes allocated on the aligned hop path"
    aec.reset()


# -- the worker thread and its warnings ---------------------------------------------------------


def _aligner(lead=40.0):
    ring = delayline.FeedRing(250)
    far_line, mic_line = delayline.HopDelay(125), delayline.HopDelay(25)
    return ring, delayline.Aligner(ring, far_line, mic_line, lead, 1000.0)


def _feed(ring, aligner, mic, far):
    for k in range(len(mic) // 128):
        s = slice(k * 128, (k + 1) * 128)
        ring.push(mic[s], far[s])
        if k % 31 == 30:
            aligner.poll()


def test_constant_reference_warns_once(farend, caplog):
    mic, _ = farend
    ring, a = _aligner()
    with caplog.at_level(logging.WARNING, "dtlnd"):
        _feed(ring, a, np.tile(mic, 2), np.zeros(2 * len(mic), np.float32))
    warnings = [r.getMessage() for r in caplog.records if "constant" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert a.far_line.target == 0 and a.state == "searching"


def test_uncorrelated_reference_warns_once(farend, nearend, caplog):
    _, far_lpb = farend
    n = min(len(far_lpb), len(nearend[0]))
    with caplog.at_level(logging.WARNING, "dtlnd"):
        ring, a = _aligner()
        _feed(ring, a, np.tile(nearend[0][:n], 3), np.tile(far_lpb[:n], 3))
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


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("delay, dmax, lead, message", [
    ("abc", 1000.0, 40.0, "neither auto nor a number"),
    (1500.0, 1000.0, 40.0, "out of range"),
    (-300.0, 1000.0, 40.0, "out of range"),
    ("auto", -5.0, 40.0, "ref_delay_max: -5 ms is out of range"),
    ("auto", "x", 40.0, "ref_delay_max: expected a number"),
    ("auto", 1000.0, 500.0, "ref_lead"),
])
def test_bad_alignment_settings_are_config_errors(delay, dmax, lead, message):
    with pytest.raises(ConfigError, match=message):
        config.check_alignment(delay, dmax, lead)


def test_alignment_settings_from_file_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mode: aec\nref_delay: 120\nref_delay_max: 500\nref_lead: 30\n")
    s = config.load(f)
    assert (s.ref_delay, s.ref_delay_max, s.ref_lead) == (120.0, 500.0, 30.0)
    assert config.load(None, {"ref_delay": "AUTO"}).ref_delay == "auto"
    f.write_text("ref_delay: 600\nref_delay_max: 500\n")
    r = dtlnd("config", "check", f)
    assert r.returncode == 78 and r.stderr.count("\n") == 1 and "ref_delay: 600 ms" in r.stderr, r.stderr
    r = dtlnd("run", "--mode", "aec", "--ref-delay", "soon", "--duration", "1")
    assert r.returncode == 78 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_process_prints_the_delay_it_applied(tmp_path, farend):
    import soundfile as sf

    mic, lpb = farend
    src = tmp_path / "in.wav"
    sf.write(src, np.stack([mic, shifted(lpb, -200)], axis=1), RATE, subtype="FLOAT")
    r = dtlnd("process", src, tmp_path / "out.wav", "--mode", "aec")
    assert r.returncode == 0, r.stderr
    assert "echo lag 235." in r.stderr and "reference shifted +192 ms" in r.stderr, r.stderr
    assert rms_dbfs(read(tmp_path / "out.wav")) <= -60
    r = dtlnd("process", src, tmp_path / "out.wav", "--mode", "aec", "--ref-delay", "-250")
    assert r.returncode == 78 and "ref_delay: -250 ms is out of range" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
