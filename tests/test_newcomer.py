"""The newcomer's first runs (issue 12): each problem seen on a fresh machine, as the user sees it.

Faults are real: PortAudio is hidden with a private mount namespace, the
machine's ALSA has no devices, espeak-ng is off the PATH.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_util import read

AIRCON = "airconditioning.wav"
UNSHARE = shutil.which("unshare")


def run_dtlnd(*args: object, env: dict | None = None, cwd: Path | None = None,
              wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(wrap or []), sys.executable, "-m", "dtlnd", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or dict(os.environ), cwd=cwd, timeout=300)


def one_line(r: subprocess.CompletedProcess, status: int, words: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == status, r.stdout + r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("dtlnd: error: ") and words in lines[0], lines[0]
    return lines[0]


# -- PortAudio not installed ---------------------------------------------------------------------

def _portaudio_file() -> Path:
    name = ctypes.util.find_library("portaudio")
    if name is None:
        pytest.skip("libportaudio2 is not installed here, so there is nothing to hide")
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
              "/lib/x86_64-linux-gnu", "/usr/lib", "/lib"):
        if (Path(d) / name).exists():
            return (Path(d) / name).resolve()
    pytest.skip(f"cannot find the file behind {name}")


def _hidden(how: str) -> list[str]:
    """A command prefix that runs its command with PortAudio gone, in a private mount namespace.

    ``file``: the library is an empty file (dlopen fails: "cannot load
    library"); ``cache``: the loader cache is empty too, so
    ``ctypes.util.find_library`` finds nothing ("library not found").
    """
    if UNSHARE is None:
        pytest.skip("unshare (util-linux) is not installed")
    lib = _portaudio_file()
    mounts = [f"mount --bind /dev/null {lib}"]
    if how == "cache":
        mounts.append("mount --bind /dev/null /etc/ld.so.cache")
    probe = subprocess.run([UNSHARE, "-rm", "sh", "-c", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace here (unprivileged user namespaces are off)")
    return [UNSHARE, "-rm", "sh", "-c", " && ".join(mounts) + ' && exec "$@"', "sh"]


@pytest.mark.parametrize("how", ["file", "cache"])
@pytest.mark.parametrize("command", [["devices"], ["run", "--duration", "1"]])
def test_portaudio_missing_is_one_line_69(how, command, models_dir):
    r = run_dtlnd(*command, *(["--model-dir", models_dir] if command[0] == "run" else []), wrap=_hidden(how))
    one_line(r, 69, "PortAudio is not installed: sudo apt install libportaudio2")


def test_hiding_portaudio_is_what_fails():
    """The same namespace without the bind mount: sounddevice loads (the test above is not vacuous)."""
    if UNSHARE is None:
        pytest.skip("unshare (util-linux) is not installed")
    _portaudio_file()
    r = subprocess.run([UNSHARE, "-rm", sys.executable, "-c", "import sounddevice"], capture_output=True, text=True)
    if r.returncode != 0 and "unshare" in r.stderr:
        pytest.skip("cannot make a mount namespace here")
    assert r.returncode == 0, r.stderr


# -- no sound devices ----------------------------------------------------------------------------

def _no_devices_env(tmp_path: Path) -> dict:
    """This machine's ALSA without the rig's PCMs or a user's .asoundrc, and no JACK server to join."""
    if glob.glob("/dev/snd/controlC*"):
        pytest.skip("this machine has sound cards: PortAudio would list them")
    env = dict(os.environ)
    for k in ("ALSA_CONFIG_PATH", "JACK_DEFAULT_SERVER"):
        env.pop(k, None)
    # An empty ALSA configuration makes PortAudio 19.6 abort (an assertion in
    # BuildDeviceList), so the stock one, which lists no cards here.
    env.update(HOME=str(tmp_path), ALSA_CONFIG_PATH="/usr/share/alsa/alsa.conf",
               JACK_DEFAULT_SERVER=f"none-{uuid.uuid4().hex[:8]}", JACK_NO_START_SERVER="1")
    return env


def test_devices_with_none_found_says_so(tmp_path):
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("no alsa-lib configuration")
    r = run_dtlnd("devices", env=_no_devices_env(tmp_path))
    one_line(r, 69, "no audio devices found")
    assert r.stdout == ""


def test_run_with_no_input_device_says_none_found(tmp_path, models_dir):
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("no alsa-lib configuration")
    r = run_dtlnd("run", "--duration", "1", "--model-dir", models_dir, env=_no_devices_env(tmp_path))
    line = one_line(r, 69, "no audio input devices found")
    assert "[none]" not in line


# -- config check loads the models as run does ---------------------------------------------------

@pytest.mark.parametrize(("text", "words"), [
    ("model: dtln_ns_flaot\n", "model 'dtln_ns_flaot' not found"),
    ("mode: aec\nmodel: dtln_ns_quant\n", "noise-suppression pair and cannot cancel echo"),
    ("mode: ns\nmodel: dtln_aec_128_quant\n", "echo-cancellation pair"),
    ("mode: aec+ns\nns_model: dtln_aec_256_quant\n", "echo-cancellation pair"),
])
def test_config_check_rejects_what_run_rejects(tmp_path, models_dir, text, words):
    conf = tmp_path / "dtlnd.yaml"
    conf.write_text(text)
    line = one_line(run_dtlnd("config", "check", conf), 78, words)
    assert str(conf) in line
    r = run_dtlnd("run", "--config", conf, "--duration", "1")
    assert r.returncode == 78 and words in r.stderr, r.stderr


def test_config_check_names_the_pairs_it_loaded(tmp_path):
    conf = tmp_path / "dtlnd.yaml"
    conf.write_text("mode: aec+ns\nmodel: dtln_aec_256_quant\n")
    r = run_dtlnd("config", "check", conf)
    assert r.returncode == 0, r.stderr
    assert "dtln_aec_256_quant + dtln_ns_quant load and fit mode aec+ns" in r.stdout.splitlines()[0]


# -- process: a summary line; output names libsndfile cannot write ------------------------------

def test_process_prints_one_summary_line(tmp_path, audio_dir):
    out = tmp_path / "clean.wav"
    r = run_dtlnd("process", audio_dir / AIRCON, out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    assert f"into {out}" in lines[0] and "dtln_ns_quant" in lines[0] and "10.0 s of audio" in lines[0]
    wall = float(lines[0].split(" s of audio in ")[1].split(" s")[0])
    rtf = float(lines[0].split("real-time factor ")[1].split()[0])
    assert wall > 0 and rtf == pytest.approx(wall / 10.0, abs=2e-3)


def test_process_folder_prints_one_summary_line(tmp_path, audio_dir):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(audio_dir / AIRCON, src / "a.wav")
    shutil.copy(audio_dir / AIRCON, src / "sub" / "b.wav")
    r = run_dtlnd("process", src, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [ln for ln in r.stdout.splitlines() if ln.startswith("enhanced 2 of 2 files")]
    assert "20.0 s of audio" in r.stdout and "real-time factor" in r.stdout


@pytest.mark.parametrize("name", ["out.xyz", "out"])
def test_process_refuses_an_output_name_libsndfile_cannot_write(tmp_path, audio_dir, name):
    r = run_dtlnd("process", audio_dir / AIRCON, tmp_path / name)
    one_line(r, 64, "name the output with one of .wav")
    assert list(tmp_path.iterdir()) == []


def test_process_mp3_is_mp3_or_refused(tmp_path, audio_dir):
    """An .mp3 name gets MP3 content where libsndfile writes MP3, and an error where it does not."""
    out = tmp_path / "out.mp3"
    r = run_dtlnd("process", audio_dir / AIRCON, out)
    if "MP3" in sf.available_formats():
        assert r.returncode == 0, r.stderr
        info = sf.info(str(out))
        assert info.format == "MP3" and info.samplerate == 16000 and abs(info.duration - 10.0) < 0.1
    else:
        one_line(r, 64, ".mp3")
        assert not out.exists()


# -- demo ----------------------------------------------------------------------------------------

def _need_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        if os.environ.get("DTLND_REQUIRE_TOOLS", "") not in ("", "0"):
            pytest.fail("espeak-ng is not installed (bootstrap.sh installs it)")
        pytest.skip("espeak-ng is not installed (bootstrap.sh installs it)")


def _report(stdout: str) -> dict[str, str]:
    return {ln.split(":", 1)[0].split(" ")[0]: ln for ln in stdout.splitlines()}


def test_demo_makes_enhances_and_reports(tmp_path, models_dir):
    _need_espeak()
    out = tmp_path / "demo"
    r = run_dtlnd("demo", out, "--model-dir", models_dir)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    noisy, clean = read(out / "noisy.wav"), read(out / "clean.wav")
    assert len(noisy) == len(clean) > 5 * 16000
    rep = _report(r.stdout)
    assert "espeak-ng speech" in rep["clip"] and "model dtln_ns_quant: found" in r.stdout
    assert "real-time factor" in rep["enhanced"]
    # The levels it prints are those of the files it wrote, and the noise really went down.
    level = rep["level"]
    whole = level.split("whole clip ")[1].split(",")[0]
    before, after = (float(v) for v in whole.split(" -> "))
    assert before == pytest.approx(10 * np.log10(np.mean(noisy.astype(np.float64) ** 2)), abs=0.1)
    assert after == pytest.approx(10 * np.log10(np.mean(clean.astype(np.float64) ** 2)), abs=0.1)
    alone = level.split("noise alone ")[1]
    n_before, n_after = (float(v) for v in alone.split(" -> "))
    assert n_before - n_after > 10, level
    assert rep["DNSMOS"].startswith("DNSMOS")


def test_demo_fetches_a_missing_pair(tmp_path, models_dir):
    _need_espeak()
    empty = tmp_path / "models"
    r = run_dtlnd("demo", tmp_path / "demo", "--model-dir", empty, "--from", models_dir)
    assert r.returncode == 0, r.stderr
    assert f"model dtln_ns_quant: fetched from {models_dir}" in r.stdout
    assert (empty / "dtln_ns_quant_1.tflite").read_bytes() == (models_dir / "dtln_ns_quant_1.tflite").read_bytes()
    assert (tmp_path / "demo" / "clean.wav").exists()


def test_demo_without_espeak_says_so_and_writes_nothing(tmp_path, models_dir, audio_dir):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no /usr/bin: no espeak-ng
    out = tmp_path / "demo"
    r = run_dtlnd("demo", out, "--model-dir", models_dir, env=env)
    one_line(r, 69, "espeak-ng is not installed")
    assert not out.exists()
    r = run_dtlnd("demo", out, "--model-dir", models_dir, "--input", audio_dir / AIRCON, env=env)
    assert r.returncode == 0, r.stderr
    assert read(out / "noisy.wav").shape == read(out / "clean.wav").shape == (160000,)


def test_demo_outdir_that_is_a_file(tmp_path, models_dir):
    f = tmp_path / "taken"
    f.write_text("x")
    one_line(run_dtlnd("demo", f, "--model-dir", models_dir), 65, "is a file")
    assert f.read_text() == "x"
