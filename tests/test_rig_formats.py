"""Output formats, a many-channel input, and allocation on the audio callbacks, on the rig.

The default output format is S16_LE; the rig's JACK PCMs are float only,
so PortAudio converts what the daemon writes (int16 / int32) to float and
the loopback recording shows exactly the daemon's rounding:
``rint(clip(y * 32767)) / 32768``.  A 6-channel file-fed input carries the
microphone in channel 1 and the reference in channel 5, with other signals
in the rest: the AEC output must be ``process`` of exactly those two.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_util import read
from rig import RATE, Recorder, Rig, daemon, exact_at, require_rig, until_clean, write_raw

NEAR_MIC = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav"
NEAR_LPB = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_lpb.wav"
AIRCON = "airconditioning.wav"

SIX = """
pcm.rig_file_6ch_in {
    type file
    slave.pcm {
        type jack
        name "rig_file_6ch_in"
        align_psize false
        capture_ports { 0 "system:capture_1" 1 "system:capture_2" 2 "system:capture_1"
                        3 "system:capture_2" 4 "system:capture_1" 5 "system:capture_2" }
    }
    file "/dev/null"
    infile { @func getenv vars [ RIG_IN_FILE ] default "/dev/zero" }
    format "raw"
}
"""


@pytest.fixture(scope="module")
def rig(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    r = Rig(require_rig(audio_dir.parent), tmp_path_factory.mktemp("rig"), "fmt")
    r.alsa_conf.write_text(r.alsa_conf.read_text() + SIX)
    with r:
        yield r


def offline(rig: Rig, wav: Path, out: Path, *args: str) -> np.ndarray:
    r = subprocess.run([sys.executable, "-m", "dtlnd", "process", str(wav), str(out), "--subtype", "FLOAT", *args],
                       capture_output=True, text=True, env=rig.env, timeout=120)
    assert r.returncode == 0, r.stderr
    return read(out)


def live(rig: Rig, tmp: Path, raw: Path, *args: str, seconds: float = 4.0, name: str = "loop.raw"
         ) -> tuple[np.ndarray, str]:
    rec = Recorder(rig, tmp / name)
    time.sleep(0.3)
    d = daemon(rig, "--output", "rig_loop_play", "--duration", seconds, "--measure", *args,
               env=rig.with_env(RIG_IN_FILE=str(raw)))
    status = d.wait(40)
    time.sleep(0.3)
    y = rec.stop()[:, 0]
    assert "Traceback" not in d.stderr, d.stderr
    assert status in (0, 1), d.stderr
    return y, d.stdout


def live_exact(rig: Rig, tmp: Path, raw: Path, want: np.ndarray, *args: str) -> np.ndarray:
    """A run whose middle 2 s of sound equal ``want`` exactly, the daemon saying OK.

    A run that is not exact must say FAIL; `until_clean` tries again a run
    jackd itself disturbed (a cycle it skipped for the recorder or the
    daemon), and fails at once on wrong audio the daemon called OK on a
    quiet rig.
    """
    def exact(r: tuple[np.ndarray, str]) -> bool:
        nz = np.flatnonzero(r[0])
        if not len(nz):
            return False
        lo = nz[0] + RATE // 2
        return exact_at(r[0], want, lo, lo + 2 * RATE)[1]

    y, _ = until_clean(rig, lambda i: live(rig, tmp, raw, *args, name=f"loop{i}.raw"), lambda r: r[1],
                       check=exact)
    return y


@pytest.mark.parametrize("fmt, scale, div", [("S16_LE", 32767.0, 32768.0), ("S32_LE", 2147483392.0, 2147483648.0)])
def test_integer_output_formats_carry_the_offline_output(rig, audio_dir, tmp_path, fmt, scale, div):
    x = read(audio_dir / AIRCON)
    raw = write_raw(tmp_path / "in.raw", np.concatenate([x, np.zeros(RATE * 4, np.float32)]))
    ref = offline(rig, audio_dir / AIRCON, tmp_path / "off.wav", "--model", "dtln_ns_float")
    q = np.clip(np.rint(ref.astype(np.float32) * np.float32(scale)), -div, scale)
    want = (q.astype(np.float64) / div).astype(np.float32)
    y = live_exact(rig, tmp_path, raw, want, "--input", "rig_file_mic_in", "--model", "dtln_ns_float",
                   "--output-format", fmt)
    assert np.abs(y).max() < 1.0


def test_six_channel_input_with_mic_1_and_reference_5(rig, audio_dir, tmp_path):
    mic, lpb = read(audio_dir / NEAR_MIC), read(audio_dir / NEAR_LPB)
    n = min(len(mic), len(lpb))
    noise = np.random.default_rng(4).standard_normal((n, 4)).astype(np.float32) * 0.1
    six = np.stack([lpb[:n], mic[:n], noise[:, 0], noise[:, 1], noise[:, 2], lpb[:n]], axis=1)
    six[:, 0] *= 0.5  # channel 0 is a different signal from 5: picking it would change the output
    raw = write_raw(tmp_path / "six.raw", np.concatenate([six, np.zeros((RATE * 4, 6), np.float32)]))
    wav = tmp_path / "mic_ref.wav"
    sf.write(wav, np.stack([mic[:n], lpb[:n]], axis=1), RATE, subtype="FLOAT")
    ref = offline(rig, wav, tmp_path / "off.wav", "--mode", "aec", "--model", "dtln_aec_128_quant")
    live_exact(rig, tmp_path, raw, ref, "--input", "rig_file_6ch_in", "--input-channels", "6", "--channel", "1",
               "--ref-channel", "5", "--mode", "aec", "--model", "dtln_aec_128_quant", "--output-format", "FLOAT_LE")
