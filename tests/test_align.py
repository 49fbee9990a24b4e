"""Reference alignment offline and its settings, on real recordings.

The AEC-challenge takes in shared/audio have the echo 35 ms behind the
reference.  "Earlier" / "later" below shift the reference against the
microphone, as a real reference path (ALSA buffers, USB, Bluetooth) does.
Offline (`dtlnd process`) aligns with look-ahead; tests/test_align_live.py
has the real-time path.
"""

from __future__ import annotations

import numpy as np
import pytest
from align_util import RATE, ms, settled, shifted
from audio_util import dtlnd, read, rms_dbfs

from dtlnd import align, config, engine
from dtlnd.errors import ConfigError
from dtlnd.offline import enhance


def offline(aec, mic, far, ref_delay="auto"):
    """What ``dtlnd process --mode aec --ref-delay REF_DELAY`` writes, and what it reported."""
    if ref_delay == 0:
        return enhance(engine.BlockStream(aec), mic, far), ""
    a = align.align_reference(mic, far, ref_delay)
    return enhance(engine.BlockStream(aec), mic, a.far, a.resets), a.text


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


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"ref_delay": "abc"}, "ref_delay: 'abc': use auto or a number of ms"),
    ({"ref_delay": 1500.0}, "ref_delay: 1500 ms is out of range"),
    ({"ref_delay": -300.0}, "ref_delay: -300 ms is out of range"),
    ({"ref_delay_max": -5.0}, "ref_delay_max: -5 ms is out of range"),
    ({"ref_delay_max": "x"}, "ref_delay_max: expected a number"),
    ({"ref_lead": 500.0}, "ref_lead: 500 ms is out of range"),
])
def test_bad_alignment_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.from_options(overrides)


def test_alignment_settings_from_file_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mode: aec\nref_delay: 120\nref_delay_max: 500\nref_lead: 30\n")
    s = config.load(f)
    assert (s.ref_delay, s.ref_delay_max, s.ref_lead) == (120.0, 500.0, 30.0)
    assert config.load(None, {"ref_delay": "AUTO"}).ref_delay == "auto"
    f.write_text("ref_delay: 600\nref_delay_max: 500\n")
    r = dtlnd("config", "check", f)
    assert r.returncode == 78 and r.stderr.count("\n") == 1 and "ref_delay: 600 ms" in r.stderr, r.stderr
    # run: values checked as the file's (78); a flag argparse types as a number is a usage error (64)
    for flag, value, status, message in (("--ref-delay", "soon", 78, "ref_delay: 'soon': use auto or a number"),
                                         ("--ref-delay-max", "-1", 78, "ref_delay_max: -1 ms is out of range"),
                                         ("--ref-lead", "far", 64, "--ref-lead: invalid float value")):
        r = dtlnd("run", "--mode", "aec", flag, value, "--duration", "1")
        assert r.returncode == status and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    s = config.load(None, {"ref_delay_max": "500", "ref_lead": "30", "ref_delay": "-20"})
    assert (s.ref_delay, s.ref_delay_max, s.ref_lead) == (-20.0, 500.0, 30.0)


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
    assert r.returncode == 64 and "--ref-delay -250 ms is out of range" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_a_drifting_delay_is_tracked_over_a_long_file(aec, farend):
    """The reference drifts from 100 to 160 ms early over 33 s (clock drift): re-aligned in small steps."""
    mic, lpb = np.tile(farend[0], 3), np.tile(farend[1], 3)
    n = len(mic)
    far = np.interp(np.arange(n) + np.linspace(ms(100), ms(160), n), np.arange(n), lpb).astype(np.float32)
    raw, _ = offline(aec, mic, far, ref_delay=0)
    y, said = offline(aec, mic, far)
    print(f"drift 100 -> 160 ms: residual after 5 s {rms_dbfs(y[5 * RATE:]):.1f} dBFS "
          f"(unaligned {rms_dbfs(raw[5 * RATE:]):.1f}); {said}")
    assert said.count("ms from") >= 2
    assert rms_dbfs(y[5 * RATE:]) <= -68
    assert settled(y) <= 5.0


def test_double_talk_aecmos_echo_no_worse_than_as_recorded(aec, farend, nearend):
    """AECMOS (the eval extra) on the double-talk mix: echo MOS within 0.1 of the recording as it is."""
    pytest.importorskip("speechmos")
    from dtlnd import metrics

    echo, lpb = farend
    mic = echo + nearend[0][:len(echo)]

    def echo_mos(far, ref_delay="auto"):
        y, _ = offline(aec, mic, far, ref_delay)
        return metrics.aecmos(far, mic, y, "dt")["aecmos_echo"]

    base = echo_mos(lpb, 0)
    for later in (-200, -400, 40):
        far = shifted(lpb, later)
        got, unaligned = echo_mos(far), echo_mos(far, 0)
        print(f"double talk, reference {later:+d} ms: AECMOS echo {got:.2f} (as recorded {base:.2f}, "
              f"unaligned {unaligned:.2f})")
        assert got >= base - 0.1
        if later < 0:
            assert got > unaligned + 0.2
