"""``dtlnd evaluate`` end to end: the real command on the real recordings.

The MOS figures are checked against speechmos run independently, in this
process, on the files ``dtlnd process`` writes; the gains against the
issue-8 targets.  DNSMOS costs about 0.4 s per 10 s clip once librosa's
numba kernels are compiled (cached after the first run), so each
recording is evaluated once per module.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from audio_util import dtlnd, read
from extra_util import eval_extra  # noqa: F401 (the fixture below)

from dtlnd import engine
from dtlnd.evaluate import EXTRA_MODULES, table

AIRCON = "airconditioning.wav"
FAR_MIC = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_mic.wav"
FAR_LPB = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_lpb.wav"
NEAR_MIC = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav"
NEAR_LPB = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_lpb.wav"


def ok(*args: object) -> subprocess.CompletedProcess:
    r = dtlnd(*args)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def fails(status: int, *args: object) -> str:
    """Run, expect ``status`` and exactly one line on stderr; return that line."""
    r = dtlnd(*args)
    assert r.returncode == status, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtlnd: error: "), r.stderr
    return lines[0]


def rows(r: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture(scope="module")
def processed(tmp_path_factory, audio_dir):
    """The three recordings through ``dtlnd process``, as a user would write them."""
    d = tmp_path_factory.mktemp("processed")
    ok("process", audio_dir / AIRCON, d / "aircon.wav")
    ok("process", audio_dir / FAR_MIC, d / "far.wav", "--mode", "aec", "--ref", audio_dir / FAR_LPB)
    ok("process", audio_dir / NEAR_MIC, d / "near.wav", "--mode", "aec", "--ref", audio_dir / NEAR_LPB)
    return d


def close(a: dict, b: dict, tol: float = 0.05) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


@pytest.mark.usefixtures("eval_extra")
def test_dnsmos_agrees_with_speechmos_on_process_output(audio_dir, processed):
    from speechmos import dnsmos

    (row,) = rows(ok("evaluate", audio_dir / AIRCON, "--json"))
    assert row["model"] == "dtln_ns_quant" and row["mode"] == "ns"
    assert set(row["output"]) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}
    for side, path in (("input", audio_dir / AIRCON), ("output", processed / "aircon.wav")):
        ref = dnsmos.run(str(path), 16000)
        close(row[side], {"dnsmos_sig": ref["sig_mos"], "dnsmos_bak": ref["bak_mos"],
                          "dnsmos_ovrl": ref["ovrl_mos"]})
    assert row["output"]["dnsmos_bak"] - row["input"]["dnsmos_bak"] > 1.0  # the noise is audibly gone


@pytest.mark.parametrize(("mic", "lpb", "out", "talk"), [(FAR_MIC, FAR_LPB, "far.wav", "st"),
                                                         (NEAR_MIC, NEAR_LPB, "near.wav", "nst")])
@pytest.mark.usefixtures("eval_extra")
def test_aecmos_agrees_with_speechmos_on_process_output(audio_dir, processed, mic, lpb, out, talk):
    from speechmos import aecmos, dnsmos

    (row,) = rows(ok("evaluate", audio_dir / mic, "--ref", audio_dir / lpb, "--mode", "aec", "--json"))
    assert row["talk"] == talk  # detected from the levels
    for side, enh in (("input", audio_dir / mic), ("output", processed / out)):
        ref = aecmos.run({"lpb": str(audio_dir / lpb), "mic": str(audio_dir / mic), "enh": str(enh)}, 16000,
                         talk_type=talk)
        got = {k: row[side][k] for k in ("aecmos_echo", "aecmos_deg")}
        close(got, {"aecmos_echo": ref["echo_mos"], "aecmos_deg": ref["deg_mos"]})
        d = dnsmos.run(str(enh), 16000)
        assert abs(row[side]["dnsmos_ovrl"] - d["ovrl_mos"]) <= 0.05
    if talk == "st":
        assert row["output"]["erle_db"] >= 45.0
        assert row["output"]["aecmos_echo"] - row["input"]["aecmos_echo"] > 1.5
    else:
        assert "erle_db" not in row["output"]  # no far-end activity: nothing to measure ERLE over


@pytest.mark.usefixtures("eval_extra")
def test_double_talk_in_a_two_channel_file(audio_dir, tmp_path):
    """Near end talking 5-8 s over the far end; the reference in channel 1 of IN, as a mic array gives it."""
    mic, far, near = read(audio_dir / FAR_MIC), read(audio_dir / FAR_LPB), read(audio_dir / NEAR_MIC)
    n = min(len(mic), len(far), len(near))
    during = np.zeros(n, np.float32)
    during[5 * 16000:8 * 16000] = near[5 * 16000:8 * 16000]
    sf.write(tmp_path / "dt.wav", np.stack([mic[:n] + during, far[:n]], axis=1), 16000, subtype="FLOAT")
    sf.write(tmp_path / "near.wav", during, 16000, subtype="FLOAT")
    (alone,) = rows(ok("evaluate", tmp_path / "dt.wav", "--mode", "aec", "--json"))
    assert alone["talk"] == "dt" and "erle_db" not in alone["output"]  # no ERLE: echo and near end overlap
    (row,) = rows(ok("evaluate", tmp_path / "dt.wav", "--mode", "aec", "--clean", tmp_path / "near.wav", "--json"))
    assert row["talk"] == "dt"
    assert row["output"]["erle_db"] >= 20.0  # over the far-end-only frames the --clean file marks
    assert row["output"]["si_sdr_db"] - row["input"]["si_sdr_db"] >= 10.0  # the echo was the distortion
    assert row["output"]["aecmos_echo"] - row["input"]["aecmos_echo"] > 1.0


@pytest.fixture(scope="module")
def mix(tmp_path_factory, audio_dir):
    """Near-end speech + white noise at 5 dB SNR, and the speech alone."""
    d = tmp_path_factory.mktemp("mix")
    speech = read(audio_dir / NEAR_MIC)
    n = np.random.default_rng(5).standard_normal(len(speech)).astype(np.float32)
    n *= np.sqrt(np.mean(speech ** 2) / np.mean(n ** 2) / 10 ** 0.5)
    sf.write(d / "noisy.wav", speech + n, 16000, subtype="FLOAT")
    sf.write(d / "clean.wav", speech, 16000, subtype="FLOAT")
    return d, speech


@pytest.mark.usefixtures("eval_extra")
def test_synthetic_mix_with_clean_gains_si_sdr_and_pesq(mix):
    d, _ = mix
    r = ok("evaluate", d / "noisy.wav", "--clean", d / "clean.wav", "--json")
    (row,) = rows(r)
    i, o = row["input"], row["output"]
    assert i["si_sdr_db"] == pytest.approx(5.0, abs=0.2)  # the mix is what it claims
    assert o["si_sdr_db"] - i["si_sdr_db"] >= 5.0
    assert o["pesq"] - i["pesq"] >= 0.3
    assert 0.0 < o["stoi"] <= 1.0 and 0.0 < i["stoi"] <= 1.0
    assert "cross-correlation" not in r.stderr  # already aligned: nothing said


@pytest.mark.usefixtures("eval_extra")
def test_misaligned_clean_is_aligned_and_says_so(mix):
    d, speech = mix
    shifted = np.concatenate([np.zeros(600, np.float32), speech])[:-200]  # 600 late, 400 samples longer
    sf.write(d / "late.wav", shifted, 16000, subtype="FLOAT")
    r = ok("evaluate", d / "noisy.wav", "--clean", d / "late.wav", "--json")
    assert "shifted -600 samples" in r.stderr
    (row,) = rows(r)
    assert row["input"]["si_sdr_db"] == pytest.approx(5.0, abs=0.2)


@pytest.mark.usefixtures("eval_extra")
def test_unrelated_or_wrong_length_clean_is_one_line(mix, audio_dir, tmp_path):
    d, speech = mix
    line = fails(65, "evaluate", d / "noisy.wav", "--clean", audio_dir / AIRCON)
    assert "does not match the input" in line
    sf.write(tmp_path / "short.wav", speech[: len(speech) // 2], 16000)
    line = fails(65, "evaluate", d / "noisy.wav", "--clean", tmp_path / "short.wav")
    assert "more than 10 % apart" in line


@pytest.mark.usefixtures("eval_extra")
def test_comparison_table_folder_means_and_a_48k_file(tmp_path, audio_dir):
    """A folder of a 16 kHz clip and the same clip at 48 kHz: resampled as process does, same scores."""
    x = read(audio_dir / AIRCON)[: 4 * 16000]  # DNSMOS repeats it to 9 s: the cost of a short clip
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a16.wav", x, 16000, subtype="FLOAT")
    sf.write(tmp_path / "in" / "b48.wav", soxr.resample(x, 16000, 48000, quality="HQ"), 48000, subtype="FLOAT")
    models = ["--model", "dtln_ns_quant", "--model", "dtln_ns_float"]
    r = ok("evaluate", tmp_path / "in", *models, "--json")
    got = rows(r)
    assert [(Path(g["file"]).name, g["model"]) for g in got] == [
        ("a16.wav", "dtln_ns_quant"), ("a16.wav", "dtln_ns_float"),
        ("b48.wav", "dtln_ns_quant"), ("b48.wav", "dtln_ns_float")]
    for a, b in ((got[0], got[2]), (got[1], got[3])):  # a resampling round trip is not bit-exact
        close(a["input"], b["input"], 0.05)
        close(a["output"], b["output"], 0.1)
    text = table(got)  # what evaluate prints without --json (one run of the command is enough)
    cells = [line.split() for line in text.splitlines()]
    assert ["dtln_ns_float", *[f"{v:.2f}" for v in got[1]["output"].values()]] == cells[4]
    # header, rule, 2 x (input + 2 models), then the means: input, quant, float
    assert cells[8][:3] == ["mean", "of", "2"] and cells[8][3] == "input"
    mean_quant = [f"{(got[0]['output'][k] + got[2]['output'][k]) / 2:.2f}" for k in got[0]["output"]]
    assert cells[9] == ["dtln_ns_quant", *mean_quant]


@pytest.mark.usefixtures("eval_extra")
def test_plot_is_written_whole(tmp_path, audio_dir):
    (tmp_path / "in").mkdir()
    for name in (FAR_MIC, FAR_LPB):
        sf.write(tmp_path / "in" / name, read(audio_dir / name)[: 3 * 16000], 16000)
    png = tmp_path / "out" / "eval.png"
    png.parent.mkdir()
    ok("evaluate", tmp_path / "in" / FAR_MIC, "--ref", tmp_path / "in" / FAR_LPB, "--mode", "aec", "--plot", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(png.parent) == ["eval.png"]  # no temporary left behind
    from PIL import Image

    with Image.open(png) as im:
        w, h = im.size
    assert w > 800 and h > 800  # 5 panels: input, reference, output, levels


@pytest.mark.usefixtures("eval_extra")
def test_plot_path_not_writable_is_73_before_any_work(tmp_path, audio_dir):
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file" / "x.png", tmp_path / "no" / "such" / "x.png", tmp_path):
        line = fails(73, "evaluate", audio_dir / FAR_MIC, "--ref", audio_dir / FAR_LPB, "--mode", "aec",
                     "--plot", bad)  # one line only: no "talk type" log, so no file was read
        assert str(bad) in line
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.usefixtures("eval_extra")
def test_bad_usage_is_one_line(audio_dir, tmp_path):
    assert "no such file" in fails(65, "evaluate", tmp_path / "missing.wav")
    assert "--talk is only used" in fails(64, "evaluate", audio_dir / AIRCON, "--talk", "st")
    assert "--ref is only used" in fails(64, "evaluate", audio_dir / AIRCON, "--ref", audio_dir / FAR_LPB)
    assert "folder" in fails(64, "evaluate", audio_dir, "--plot", tmp_path / "x.png")
    sf.write(tmp_path / "short.wav", read(audio_dir / AIRCON)[:8000], 16000)
    assert "0.50 s of audio: evaluate needs at least 1 s" in fails(65, "evaluate", tmp_path / "short.wav")
    sf.write(tmp_path / "silent.wav", np.zeros(32000, np.float32), 16000)
    assert "digital silence" in fails(65, "evaluate", tmp_path / "silent.wav")


@pytest.mark.usefixtures("eval_extra")
def test_max_suppression(audio_dir):
    """With the engine's limit (issue 8 item 3): ERLE on far-end single talk is the limit; without: one line."""
    args = ("evaluate", audio_dir / FAR_MIC, "--ref", audio_dir / FAR_LPB, "--mode", "aec", "--json",
            "--max-suppression", "30")
    if "max_suppression" not in inspect.signature(engine.build).parameters:
        assert "no suppression limit yet" in fails(64, *args)
        return
    (row,) = rows(ok(*args))
    assert row["output"]["erle_db"] == pytest.approx(30.0, abs=2.0)
    assert row["model"].endswith("(max 30 dB)")


def test_run_path_never_imports_the_extra():
    # onnxruntime is also a core dependency (ONNX model pairs): only the scoring and plotting packages count
    scoring = sorted(set(EXTRA_MODULES) - {"onnxruntime"})
    code = ("import sys, dtlnd.cli, dtlnd.service, dtlnd.offline, dtlnd.engine; dtlnd.cli.build_parser(); "
            f"print(sorted(m for m in {scoring!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_missing_extra_exits_69_in_a_venv_without_it(tmp_path, audio_dir):
    """A real venv that sees this one's packages except the eval extra's (symlinked site-packages)."""
    site = Path(sysconfig.get_paths()["purelib"])
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    own = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()"
                               "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    hidden = {"speechmos", "onnxruntime", "librosa", "requests", "pesq", "pystoi", "matplotlib"}
    for entry in site.iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower()
        if top not in hidden | {"__editable__", "dtlnd"} and not (own / entry.name).exists():
            (own / entry.name).symlink_to(entry)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    probe = subprocess.run([venv / "bin" / "python", "-c", "import importlib.util as u; "
                            "print(u.find_spec('speechmos'), u.find_spec('numpy') is not None)"],
                           capture_output=True, text=True, env=env, check=True)
    assert probe.stdout.split() == ["None", "True"]
    r = subprocess.run([venv / "bin" / "python", "-m", "dtlnd", "evaluate", audio_dir / AIRCON, "--plot",
                        tmp_path / "x.png"], capture_output=True, text=True, env=env)
    assert r.returncode == 69, r.stderr
    assert r.stderr.strip().splitlines() == [
        "dtlnd: error: dtlnd evaluate needs the 'eval' extra (speechmos, onnxruntime, librosa, requests, pesq, "
        "pystoi, matplotlib not installed): pip install 'dtlnd[eval]'"]
    assert not (tmp_path / "x.png").exists()
