"""``dtlnd run`` end to end on the user-space audio rig (see tests/rig.py).

The daemon runs as a subprocess through the real sounddevice -> PortAudio
-> alsa-lib path: it reads a rig microphone PCM (live, or fed from a file
from frame 0 and clocked by jackd) and writes the loopback stand-in, which
``arecord`` records.  Needs jackd2, alsa-utils, libasound2-plugins and
libportaudio2; without them the tests skip, or fail when
DTLND_REQUIRE_AUDIO_RIG=1 (CI).

What is checked: the streamed output equals ``dtlnd process`` sample for
sample (NS float, AEC quantized and aec+ns: bit-exact); the delay ``--measure``
reports (aec+ns: both stages', 48 ms algorithmic) is the one a cross-correlation finds; loopback consumers may come
and go; systemd notify, SIGTERM, SIGHUP; the ALSA plugins the streams do not
use are unloaded; device loss; bad settings fail in one line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_util import read, rms_dbfs, snr_db
from rig import (
    RATE,
    NotifySocket,
    Proc,
    Recorder,
    Rig,
    carries_exactly,
    daemon,
    lag,
    play,
    require_rig,
    sound_runs,
    until_clean,
    write_raw,
)

from dtlnd.constants import SHIFT

AIRCON = "airconditioning.wav"
NEAR_MIC = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav"
NEAR_LPB = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_lpb.wav"

OUT = ("--output", "rig_loop_play", "--output-format", "FLOAT_LE")
BLOCK = SHIFT  # one hop: the reader's step and the delay tolerance
DELAY = {"ns": 384, "aec": 384, "aec+ns": 768}  # the engine's algorithmic delay in samples, per mode
EDGE = RATE // 10  # the first and last 0.1 s of a run are not compared
XNNPACK = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def rig_folder(audio_dir: Path) -> Path:
    return require_rig(audio_dir.parent)


@pytest.fixture(scope="session")
def rig(rig_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """One jackd for the session, under a server name no other run uses."""
    with Rig(rig_folder, tmp_path_factory.mktemp("rig"), "s") as r:
        yield r


@pytest.fixture(scope="session")
def speech_raw(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Speech for 40 s as a raw mono file, with a little noise so no output block is exactly zero.

    Exact zeros in the loopback then mean "the daemon was not running".
    """
    x = read(audio_dir / NEAR_MIC)
    x = np.tile(x, 4)
    x = x + np.random.default_rng(1).standard_normal(len(x)).astype(np.float32) * 1e-4
    return write_raw(tmp_path_factory.mktemp("speech") / "speech.raw", x)


def dtlnd(*args: object, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtlnd", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def run_env(rig: Rig, raw: Path, **extra: str) -> dict:
    return rig.with_env(RIG_IN_FILE=str(raw), **extra)


def stop(d: Proc, timeout: float = 10.0) -> int:
    if d.p.poll() is None:
        d.signal(signal.SIGTERM)
    try:
        return d.wait(timeout)
    except subprocess.TimeoutExpired:
        d.kill()
        raise AssertionError(f"dtlnd did not stop within {timeout} s of SIGTERM; stderr:\n{d.stderr}") from None


def summary_latency(stdout: str) -> float:
    m = re.search(r"^\s+latency: ([\d.]+) ms = ", stdout, re.MULTILINE)
    assert m, f"no latency in the --measure summary:\n{stdout}"
    return float(m.group(1))


def summary_algorithmic(stdout: str) -> float:
    m = re.search(r"^\s+latency: [\d.]+ ms = ([\d.]+) algorithmic", stdout, re.MULTILINE)
    assert m, f"no algorithmic delay in the --measure summary:\n{stdout}"
    return float(m.group(1))


# -- 1, 2: streamed output == offline output ---------------------------------------------


def _aec_input(audio_dir: Path, tmp: Path) -> tuple[Path, np.ndarray]:
    mic, lpb = read(audio_dir / NEAR_MIC), read(audio_dir / NEAR_LPB)
    n = min(len(mic), len(lpb))
    x = np.stack([mic[:n], lpb[:n]], axis=1)
    wav = tmp / "mic_ref.wav"
    sf.write(wav, x, RATE, subtype="FLOAT")
    return wav, x


@pytest.mark.parametrize("mode, model, pcm, playback", [
    ("ns", "dtln_ns_float", "rig_file_mic_in", "callback"),
    ("aec", "dtln_aec_128_quant", "rig_file_aec_in", "callback"),
    ("aec+ns", "dtln_aec_128_quant", "rig_file_aec_in", "callback"),
    ("ns", "dtln_ns_float", "rig_file_mic_in", "push"),
])
def test_stream_is_sample_exact(rig, audio_dir, tmp_path, mode, model, pcm, playback):
    """File-fed input from frame 0: the loopback carries exactly what ``dtlnd process`` writes.

    Both run the same engine on the same runtime with FFTW_ESTIMATE plans,
    so even the quantized AEC pair is bit-exact (asserted), not just close.
    The daemon keeps the engine's delay and ``process`` removes it: the
    cross-correlation absorbs that, and the lag is checked to be the
    output's first sound plus the algorithmic delay ``--measure`` reports,
    less under one hop.
    """
    if mode == "ns":
        wav = audio_dir / AIRCON
        x = read(wav)
    else:
        wav, x = _aec_input(audio_dir, tmp_path)
    # Longer than the run: past its end the file PCM would read silence.
    raw = write_raw(tmp_path / "in.raw", np.concatenate([x, np.zeros((RATE * 4, *x.shape[1:]), np.float32)]))
    offline = tmp_path / "offline.wav"
    r = dtlnd("process", wav, offline, "--mode", mode, "--model", model, "--subtype", "FLOAT", env=rig.env)
    assert r.returncode == 0, r.stderr
    ref = read(offline)

    def attempt(i: int) -> tuple[np.ndarray, Proc]:
        rec = Recorder(rig, tmp_path / f"loop{i}.raw")
        time.sleep(0.3)
        d = daemon(rig, "--input", pcm, "--mode", mode, "--model", model, *OUT, "--duration", "4", "--measure",
                   "--playback", playback, env=run_env(rig, raw))
        status = d.wait(30)
        time.sleep(0.3)
        y = rec.stop()[:, 0]
        assert "Traceback" not in d.stderr and status in (0, 1), d.stderr
        return y, d

    def lead(y: np.ndarray) -> int:
        """How far the output's first sound comes before the reported delay is up, less that delay."""
        runs = sound_runs(y)
        return lag(y, ref) - runs[0][0] - DELAY[mode] if runs else -len(y)

    def clean(r: tuple[np.ndarray, Proc]) -> bool:
        # A cycle jackd skipped for the recorder in the first second shifts the lag against the
        # output's start: such a run is tried again, as is one not exact in the middle.
        return carries_exactly(r[0], ref, EDGE) and -BLOCK < lead(r[0]) <= 0

    y, d = until_clean(rig, attempt, lambda r: r[1].stdout, clean)

    runs = sound_runs(y)
    assert runs, "the loopback recording is all zeros"
    start, end = runs[0][0], runs[-1][1]
    assert end - start > 3 * RATE, f"daemon output lasts only {(end - start) / RATE:.2f} s"
    d_lag = lag(y, ref)
    assert 0 <= d_lag - start < 1024, f"lag {d_lag} for output starting at {start}"
    # The reported algorithmic delay (aec+ns: both stages', 768 samples) is the lag past the output's
    # first sound, which comes within one hop before the delay is up (a misreport by a hop fails).
    algorithmic = summary_algorithmic(d.stdout)
    assert algorithmic == 1000.0 * DELAY[mode] / RATE, d.stdout
    assert -BLOCK < lead(y) <= 0, f"lag {d_lag} = output start {start} + {d_lag - start}, reported {DELAY[mode]}"
    lo, hi = max(start, d_lag) + EDGE, min(end, d_lag + len(ref)) - EDGE
    assert hi - lo > 2 * RATE
    got, want = y[lo:hi], ref[lo - d_lag:hi - d_lag]
    snr = snr_db(want, got)
    assert snr >= 60, f"streamed vs offline: SNR {snr:.1f} dB"
    assert np.array_equal(got, want), f"not bit-exact: SNR {snr:.1f} dB, max error {np.abs(got - want).max():.3g}"


# -- 3: the delay --measure reports is the real one --------------------------------------


@pytest.mark.parametrize("mode, model, pcm, playback", [
    ("ns", "dtln_ns_float", "rig_mic_in", "callback"),
    ("aec+ns", "dtln_aec_128_quant", "rig_aec_in", "callback"),  # 24 ms more algorithmic delay: a second stage
    ("ns", "dtln_ns_float", "rig_mic_in", "push"),  # 8 ms less, in the ring and the device's queue
])
def test_measured_delay_matches_cross_correlation(rig, audio_dir, tmp_path, mode, model, pcm, playback):
    """Live input: ``aplay`` -> mic bus -> daemon -> loopback, both buses recorded in one JACK cycle."""
    mic, lpb = read(audio_dir / NEAR_MIC), read(audio_dir / NEAR_LPB)
    n = 4 * RATE
    src = tmp_path / "src.wav"
    sf.write(src, np.stack([mic[:n], lpb[:n]], axis=1), RATE, subtype="FLOAT")
    found, reported = probe_delay(rig, src, tmp_path, "--input", pcm, "--mode", mode, "--model", model, *OUT,
                                  "--playback", playback)
    print(f"{mode}: end-to-end delay by cross-correlation {found:.1f} ms, --measure reports {reported:.1f} ms")
    assert abs(found - reported) <= 1000.0 * BLOCK / RATE / 2, \
        f"cross-correlation {found:.1f} ms, --measure {reported:.1f} ms"


def probe_delay(rig: Rig, src: Path, tmp_path: Path, *args: str) -> tuple[float, float]:
    """(cross-correlated, reported) end-to-end delay in ms of ``run --measure ARGS`` on ``src`` played live.

    ``aplay`` -> mic bus -> daemon -> loopback, both buses recorded in one JACK cycle, in a clean run.
    """
    def attempt(i: int) -> tuple[np.ndarray, Proc]:
        d = daemon(rig, *args, "--measure")
        d.wait_for("audio flowing")
        rec = Recorder(rig, tmp_path / f"probe{i}.raw", pcm="probe_mic_loop", channels=2)
        time.sleep(0.2)
        player = play(rig, src)
        assert player.wait(30) == 0, player.stderr.read() if player.stderr else ""
        time.sleep(0.2)
        x = rec.stop()
        stop(d)
        return x, d

    x, d = until_clean(rig, attempt, lambda r: r[1].stdout)
    assert rms_dbfs(x[:, 0]) > -50 and rms_dbfs(x[:, 1]) > -60, "the probe recorded no speech"
    return 1000.0 * lag(x[:, 1], x[:, 0], max_lag=rig.rate // 2) / rig.rate, summary_latency(d.stdout)


# -- 4: loopback consumers come and go ------------------------------------------------------


def test_consumers_before_after_and_across_a_restart(rig, speech_raw, tmp_path):
    """arecord started before the daemon, another after it; then the daemon restarts under both."""
    env = run_env(rig, speech_raw)
    since = rig.log_size()
    before = Recorder(rig, tmp_path / "before.raw")
    time.sleep(0.5)
    d1 = daemon(rig, "--input", "rig_file_mic_in", *OUT, env=env)
    d1.wait_for("audio flowing")
    time.sleep(1.0)
    after = Recorder(rig, tmp_path / "after.raw")
    time.sleep(1.5)
    assert stop(d1) == 0, d1.stderr
    time.sleep(1.0)
    d2 = daemon(rig, "--input", "rig_file_mic_in", *OUT, env=env)
    d2.wait_for("audio flowing")
    time.sleep(1.5)
    assert stop(d2) == 0, d2.stderr
    time.sleep(0.3)
    ya, yb = before.stop()[:, 0], after.stop()[:, 0]
    # Cycles jackd itself lost leave short holes in a daemon's output; they are not what this test is about.
    hole = int(0.25 * RATE) if rig.trouble(since) else 0

    for name, y, leading_silence in (("before", ya, True), ("after", yb, False)):
        runs = []
        for a, b in sound_runs(y):
            if runs and a - runs[-1][1] <= hole:
                runs[-1] = (runs[-1][0], b)
            else:
                runs.append((a, b))
        runs = [(a, b) for a, b in runs if b - a >= BLOCK * 4]
        spans = [(a / RATE, b / RATE) for a, b in runs]
        assert len(runs) == 2, f"arecord started {name} the daemon: sound at {spans} s"
        (a1, b1), (a2, b2) = runs
        if leading_silence:
            assert a1 >= 0.3 * RATE, f"{name}: output before the daemon started"
        else:
            assert a1 <= 0.1 * RATE, f"{name}: the running daemon's output reached arecord only after {a1 / RATE:.2f} s"
        assert a2 - b1 >= 0.5 * RATE, f"{name}: the restart left no gap"
        assert b2 - a2 >= 1.0 * RATE, f"{name}: only {(b2 - a2) / RATE:.2f} s after the restart"
        for a, b in runs:
            assert rms_dbfs(y[a:b]) > -60, f"{name}: near-silent output {rms_dbfs(y[a:b]):.1f} dBFS"


# -- 5, 6: systemd notify, signals ---------------------------------------------------------------


@pytest.fixture
def notify_socket():
    folder = Path(tempfile.mkdtemp(prefix="dtlnd-notify-"))  # short: AF_UNIX paths stop at 107 bytes
    sock = NotifySocket(folder)
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


STATUS_RE = re.compile(r"^STATUS=ns (\S+): [\d.]+ ms/block, xruns \d+, misses \d+, gaps \d+, errors \d+, "
                       r"resets \d+, latency \d+ ms$")


def test_systemd_notify_and_watchdog(rig, speech_raw, notify_socket):
    """READY once audio flows, WATCHDOG while it keeps flowing, STATUS, STOPPING.

    A stalled stream (jackd stopped) gets no WATCHDOG from the first ping
    interval after the stall until the daemon declares the audio lost
    (1.5 s); from then on it pings on purpose while it retries the device.
    """
    ns = notify_socket
    d = daemon(rig, "--input", "rig_file_mic_in", *OUT, env=run_env(rig, speech_raw, **ns.env(1_000_000)))
    t_ready, _ = ns.wait_for("READY=1")
    d.wait_for("audio flowing")
    assert ns.messages[0][1] == "READY=1", f"sent before READY: {ns.messages[:3]}"
    time.sleep(2.2)
    dogs = ns.times("WATCHDOG=1", t_ready)
    assert len(dogs) >= 4 and max(np.diff(dogs)) < 0.8, f"WATCHDOG at {np.round(np.array(dogs) - t_ready, 2)}"
    statuses = [m for _, m in ns.messages if m.startswith("STATUS=")]
    assert statuses and all(STATUS_RE.match(m) for m in statuses), statuses
    assert STATUS_RE.match(statuses[-1]).group(1) == "dtln_ns_quant"

    jackd = rig.jackd_pid
    t_stop = time.monotonic()
    os.kill(jackd, signal.SIGSTOP)
    try:
        time.sleep(3.0)
    finally:
        t_cont = time.monotonic()
        os.kill(jackd, signal.SIGCONT)
    lost = d.wait_for("audio lost", timeout=10)
    t_lost = d.lines("audio lost")[0][0]
    assert "no audio for 1.5 s" in lost
    assert t_lost - t_stop >= 1.4, f"declared lost after {t_lost - t_stop:.2f} s"
    stalled = [t - t_stop for t in ns.times("WATCHDOG=1", t_stop + 0.6, t_cont) if t < t_lost]
    assert not stalled, f"WATCHDOG while the audio was stalled, at +{stalled} s"
    t_status, _ = ns.wait_for("STATUS=audio lost", after=t_stop, timeout=5)
    # Sent before closing the streams, which blocks here until jackd runs again.
    assert t_status < t_cont, "STATUS=audio lost came only after the stall ended"
    d.wait_for("audio resumed", timeout=15, after=t_cont - 0.5)
    t_back, _ = ns.wait_for("READY=1", after=t_cont - 0.5, timeout=10)
    time.sleep(1.5)
    assert len(ns.times("WATCHDOG=1", t_back)) >= 2, "no WATCHDOG after the audio came back"
    _, status = ns.wait_for("STATUS=ns", after=t_back + 0.1, timeout=3)
    assert STATUS_RE.match(status), status

    t_term = d.signal(signal.SIGTERM)
    assert d.wait(10) == 0, d.stderr
    ns.wait_for("STOPPING=1", after=t_term, timeout=2)
    assert "Traceback" not in d.stderr


STALL_PCM = """
# The loopback behind a FIFO: once nobody reads the FIFO, the daemon's
# output stream blocks in write() while its input keeps running.
pcm.stall_out {{
    type file
    slave.pcm "rig_loop_play"
    file "{fifo}"
    format "raw"
}}
"""


@pytest.mark.parametrize("playback", ["callback", "push"])
def test_wedged_output_is_a_stall(rig, speech_raw, notify_socket, tmp_path, playback):
    """An output stream that stops is lost audio too, named as the output's: no WATCHDOG, then a reopen.

    With ``playback: callback`` the input runs on; with ``push`` the write
    that blocks holds the capture callback up as well.
    """
    ns = notify_socket
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    conf = tmp_path / "asoundrc"
    conf.write_text(rig.alsa_conf.read_text() + STALL_PCM.format(fifo=fifo))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    draining, done = threading.Event(), threading.Event()
    draining.set()

    def drain() -> None:
        while not done.is_set():
            if draining.is_set():
                try:
                    while os.read(reader, 1 << 16):
                        pass
                except BlockingIOError:
                    pass
            time.sleep(0.01)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    d = None
    try:
        env = run_env(rig, speech_raw, ALSA_CONFIG_PATH=str(conf), **ns.env(1_000_000))
        d = daemon(rig, "--input", "rig_file_mic_in", "--output", "stall_out", "--output-format", "FLOAT_LE",
                   "--playback", playback, env=env)
        ns.wait_for("READY=1")
        time.sleep(1.0)
        t_stop = time.monotonic()
        draining.clear()  # the FIFO (64 KiB, about 1 s of audio) fills, then writes block
        lost = d.wait_for("audio lost", timeout=10, after=t_stop)
        t_lost = d.lines("audio lost")[0][0]
        assert "no output audio for 1.5 s" in lost, lost
        late = [round(t - t_lost, 2) for t in ns.times("WATCHDOG=1", t_lost - 0.9, t_lost)]
        assert not late, f"WATCHDOG with the output wedged, at {late} s before it was declared lost"
        draining.set()
        d.wait_for("audio resumed", timeout=15, after=t_lost)
        t_back, _ = ns.wait_for("READY=1", after=t_lost, timeout=5)
        time.sleep(1.2)
        assert len(ns.times("WATCHDOG=1", t_back)) >= 2
        assert stop(d) == 0, d.stderr
    finally:
        draining.set()
        if d is not None:
            d.kill()
        done.set()
        drainer.join(2)
        os.close(reader)


def test_sigterm_exits_within_a_second(rig, speech_raw):
    d = daemon(rig, "--input", "rig_file_mic_in", *OUT, env=run_env(rig, speech_raw))
    d.wait_for("audio flowing")
    time.sleep(1.0)
    t = d.signal(signal.SIGTERM)
    status = d.p.wait(5)
    took = time.monotonic() - t
    d.wait()
    assert status == 0, d.stderr
    assert took < 1.0, f"exit {took:.2f} s after SIGTERM"
    assert d.lines("stopping")


def _config(path: Path, model: str, output: str = "rig_loop_play") -> None:
    path.write_text(f"model: {model}\ninput:\n  device: rig_file_mic_in\n"
                    f"output:\n  device: {output}\n  format: FLOAT_LE\n")


def _loop_has_sound(rig: Rig, path: Path, seconds: float = 0.8) -> float:
    rec = Recorder(rig, path)
    time.sleep(seconds)
    y = rec.stop()[:, 0]
    assert len(y) > 0.5 * seconds * RATE
    return rms_dbfs(y)


def test_sighup_reloads_the_config(rig, speech_raw, notify_socket, tmp_path):
    """A changed model is switched to in place; a broken file is reported and the old settings kept."""
    ns = notify_socket
    cfg = tmp_path / "dtlnd.yaml"
    _config(cfg, "dtln_ns_quant")
    d = daemon(rig, "--config", cfg, env=run_env(rig, speech_raw, **ns.env(1_000_000)))
    ns.wait_for("READY=1")
    ns.wait_for("STATUS=ns dtln_ns_quant:")

    _config(cfg, "dtln_ns_float")
    t_hup = d.signal(signal.SIGHUP)
    assert "model dtln_ns_float" in d.wait_for("reloading", after=t_hup)
    d.wait_for("reloaded: input 'rig_file_mic_in'", after=t_hup)
    ns.wait_for("STATUS=ns dtln_ns_float:", after=t_hup, timeout=3)
    assert d.p.poll() is None, d.stderr
    assert _loop_has_sound(rig, tmp_path / "reloaded.raw") > -60

    cfg.write_text("model: [dtln_ns_quant\n")
    t_hup = d.signal(signal.SIGHUP)
    err = d.wait_for("reload failed", after=t_hup)
    assert "keeping the running configuration" in err and "invalid YAML" in err, err
    time.sleep(1.2)
    assert d.p.poll() is None, d.stderr
    _t, status = ns.wait_for("STATUS=", after=t_hup + 0.1, timeout=3)
    assert status.startswith("STATUS=ns dtln_ns_float:"), status
    assert ns.times("WATCHDOG=1", t_hup + 0.5), "WATCHDOG stopped after a failed reload"
    assert _loop_has_sound(rig, tmp_path / "kept.raw") > -60

    assert stop(d) == 0, d.stderr
    assert "Traceback" not in d.stderr


NEW_PCM = """
pcm.rig_loop_play_new {
    type jack
    name "rig_loop_play_new"
    align_psize false
    playback_ports { 0 "aloop:input" }
}
"""


def test_sighup_finds_a_device_added_after_start(rig, speech_raw, tmp_path):
    """A reload looks the devices up afresh: PortAudio lists them once per initialisation."""
    conf = tmp_path / "asoundrc"
    conf.write_text(rig.alsa_conf.read_text())
    cfg = tmp_path / "dtlnd.yaml"
    _config(cfg, "dtln_ns_quant")
    d = daemon(rig, "--config", cfg, env=run_env(rig, speech_raw, ALSA_CONFIG_PATH=str(conf)))
    d.wait_for("audio flowing")
    conf.write_text(conf.read_text() + NEW_PCM)  # as if a USB device had been plugged in
    _config(cfg, "dtln_ns_quant", output="rig_loop_play_new")
    t_hup = d.signal(signal.SIGHUP)
    line = d.wait_for("reloaded|reload failed", after=t_hup)
    assert line.startswith("dtlnd: INFO: reloaded") and "'rig_loop_play_new'" in line, d.stderr
    d.wait_for("audio flowing", after=t_hup)
    assert _loop_has_sound(rig, tmp_path / "new.raw") > -60
    assert stop(d) == 0, d.stderr


def _alsa_plugins(maps: str) -> set[str]:
    """The ALSA PCM plugins (``libasound_module_pcm_<name>.so``) a /proc/PID/maps text shows mapped."""
    return set(re.findall(r"libasound_module_pcm_(\w+)\.so", maps))


def test_plugins_the_streams_do_not_use_are_unloaded(rig, speech_raw, tmp_path):
    """PortAudio's device scan loads every ALSA plugin; once the streams are open only theirs (jack) stay.

    On this machine the scan maps a52, pulse and the like (libavcodec,
    libpulse): about 11 MB of RSS the daemon never uses.  After a reload
    (PortAudio restarted, so the scan ran again) it is still only jack,
    and the audio flows.
    """
    show_maps = "import os, sounddevice; print(open(f'/proc/{os.getpid()}/maps').read())"
    scan = subprocess.run([sys.executable, "-c", show_maps], env=rig.env, capture_output=True, text=True, timeout=60)
    assert scan.returncode == 0, scan.stderr
    scanned = _alsa_plugins(scan.stdout)
    if scanned <= {"jack"}:
        pytest.skip(f"PortAudio's scan loads no ALSA plugin but jack here ({sorted(scanned)}): nothing to unload")
    cfg = tmp_path / "dtlnd.yaml"
    _config(cfg, "dtln_ns_quant")
    d = daemon(rig, "--config", cfg, env=run_env(rig, speech_raw))
    d.wait_for("audio flowing")
    assert _alsa_plugins(Path(f"/proc/{d.pid}/maps").read_text()) == {"jack"}, f"the scan loaded {sorted(scanned)}"
    t_hup = d.signal(signal.SIGHUP)
    d.wait_for("reloaded: input", after=t_hup)
    d.wait_for("audio flowing", after=t_hup)
    assert _alsa_plugins(Path(f"/proc/{d.pid}/maps").read_text()) == {"jack"}
    assert _loop_has_sound(rig, tmp_path / "after.raw") > -60
    assert stop(d) == 0, d.stderr


# -- 7: the device goes away and comes back ----------------------------------------------------

def test_device_loss_and_recovery(rig_folder, speech_raw, tmp_path):
    """jackd stops mid-run and starts again: 'audio lost' once, then 'audio resumed', same process.

    Its own rig: the session's rig stays up for the other tests.
    """
    own = Rig(rig_folder, tmp_path, "loss")
    own.start()
    d = None
    try:
        d = daemon(own, "--input", "rig_file_mic_in", *OUT, env=run_env(own, speech_raw))
        d.wait_for("audio flowing")
        time.sleep(1.0)
        own.stop()
        d.wait_for("audio lost", timeout=10)
        t_lost = time.monotonic()
        while time.monotonic() - t_lost < 2.0 and d.p.poll() is None:  # two reopen attempts
            time.sleep(0.05)
        assert d.p.poll() is None, d.stderr
        own.start()
        t_up = time.monotonic()
        d.wait_for("audio resumed", timeout=20, after=t_up - 0.2)
        d.wait_for("audio flowing", after=t_up)
        time.sleep(0.5)
        assert d.p.poll() is None, d.stderr
        assert _loop_has_sound(own, tmp_path / "resumed.raw", 1.0) > -60
        assert len(d.lines("audio lost")) == 1, d.stderr
        assert stop(d) == 0, d.stderr
    finally:
        if d is not None:
            d.kill()
        own.stop()


# -- 8: bad settings: one line, the right status, no hang ----------------------------------------

BAD_SETTINGS = {
    "invalid_yaml": ("model: [dtln_ns_quant\n", [], 78, "invalid YAML at line"),
    "unknown_key": ("modle: dtln_ns_quant\n", [], 78, "did you mean 'mode' or 'model'?"),
    "wrong_type": ("threads: many\n", [], 78, "threads: expected an integer, got 'many'"),
    "unknown_input": (None, ["--input", "no_such_mic"], 69, "1: rig_mic_in"),
    "unknown_output": (None, ["--output", "no_such_loop"], 69, "rig_loop_play"),
    "channel_out_of_range": (None, ["--channel", "5"], 78, "input.channel: 5 is out of range"),
    "model_cannot_do_mode": (None, ["--mode", "aec", "--model", "dtln_ns_quant"], 78, "cannot cancel echo"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_settings_fail_in_one_line(rig, tmp_path, case):
    text, args, status, words = BAD_SETTINGS[case]
    cmd = ["run", "--input", "rig_mic_in", "--output", "rig_loop_play"]
    if text is not None:
        cfg = tmp_path / "dtlnd.yaml"
        cfg.write_text(text)
        cmd += ["--config", cfg]
    t = time.monotonic()
    r = dtlnd(*cmd, *args, env=rig.env, timeout=30)
    took = time.monotonic() - t
    lines = [line for line in r.stderr.splitlines() if line.strip() and XNNPACK not in line]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("dtlnd: error: "), r.stderr
    assert words in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert r.returncode == status, r.stderr
    assert r.stdout == ""
    assert took < 10, f"took {took:.1f} s"


# -- 9: dtlnd devices ---------------------------------------------------------------------------------------


def test_devices_lists_the_rig(rig):
    r = dtlnd("devices", env=rig.env)
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines()[1:]:
        m = re.match(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(yes|no|-)\s+(yes|no|-)\s+(.+) \(default (\d+) Hz\)$", line)
        assert m, line
        rows[m.group(6)] = (int(m.group(2)), int(m.group(3)), m.group(4), m.group(5))
    expected = {"rig_aec_in": (2, 0, "yes", "-"), "rig_mic_in": (1, 0, "yes", "-"), "rig_src": (0, 2, "-", "yes"),
                "rig_loop_play": (0, 1, "-", "yes"), "rig_loop_rec": (1, 0, "yes", "-"),
                "rig_duplex": (2, 1, "yes", "yes"), "rig_file_aec_in": (2, 0, "yes", "-"),
                "rig_file_mic_in": (1, 0, "yes", "-"), "probe_mic_loop": (2, 0, "yes", "-")}
    for name, want in expected.items():
        assert rows.get(name) == want, f"{name}: {rows.get(name)}\n{r.stdout}"


# -- 48 kHz devices: resampled in process ---------------------------------------------------

def test_48k_devices_are_resampled_in_process(rig, audio_dir, tmp_path):
    """A device that runs at 48 kHz is opened at 48 kHz: soxr down to the engine, the bridge
    back up.  The rig's ALSA-only PCMs take any rate but are unclocked (they run as fast
    as the CPU), so this checks the path and the sound, not timing."""
    import soxr

    x = read(audio_dir / "airconditioning.wav")
    raw_in = tmp_path / "in48.f32"
    np.tile(soxr.resample(x, 16000, 48000).astype("<f4"), 40).tofile(raw_in)
    raw_out = tmp_path / "out48.f32"
    r = dtlnd("run", "--input", "rig_fast_in", "--output", "rig_fast_out", "--input-rate", "48000",
              "--output-rate", "48000", "--output-format", "FLOAT_LE", "--duration", "1.5",
              env=rig.with_env(RIG_IN_FILE=str(raw_in), RIG_OUT_FILE=str(raw_out)))
    assert "Traceback" not in r.stderr, r.stderr
    assert "runs at 48000 Hz: resampling to 16000 Hz" in r.stderr
    assert "runs at 48000 Hz: resampling from 16000 Hz" in r.stderr
    y = np.fromfile(raw_out, "<f4").astype(np.float64)
    start = np.flatnonzero(np.abs(y) > 1e-4)[0] + 48000
    seg = y[start:start + 48000 * 5]
    assert len(seg) == 48000 * 5 and rms_dbfs(seg) > -40
    power = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
    freq = np.fft.rfftfreq(len(seg), 1 / 48000)
    # 16 kHz audio carries nothing above 8 kHz: what is there is resampling images.
    assert 10 * np.log10(power[freq < 8000].sum() / power[freq > 8500].sum()) > 20
