"""install.sh staged into a temporary root: the tree, and the installed dtlnd working."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def staged(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("root")
    r = subprocess.run([str(REPO / "install.sh"), "--root", str(root), "--models-from", str(models_dir),
                        "--models", "dtln_ns_quant"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return root


def test_staged_tree(staged):
    expected = [
        "opt/dtlnd/venv/bin/dtlnd",
        "usr/local/bin/dtlnd",
        "etc/dtlnd/dtlnd.yaml",
        "var/lib/dtlnd/models/dtln_ns_quant_1.tflite",
        "var/lib/dtlnd/models/dtln_ns_quant_2.tflite",
        "etc/systemd/system/dtlnd.service",
        "etc/modules-load.d/snd-aloop.conf",
        "etc/modprobe.d/snd-aloop.conf",
        "etc/alsa/conf.d/50-dtlnd.conf",
        "etc/alsa/conf.d/51-dtlnd-aec.conf",
    ]
    tree = sorted(str(p.relative_to(staged)) for p in staged.rglob("*")
                  if p.is_file() and "venv/lib" not in str(p) and "venv/include" not in str(p))
    print("\nstaged tree (venv internals left out):\n  " + "\n  ".join(tree))
    for rel in expected:
        assert (staged / rel).exists(), rel
    assert (staged / "etc/dtlnd/dtlnd.yaml").read_text() == (REPO / "config/dtlnd.yaml").read_text()
    assert os.readlink(staged / "usr/local/bin/dtlnd") == str(staged / "opt/dtlnd/venv/bin/dtlnd")


def test_installed_dtlnd_runs(staged, audio_dir, tmp_path):
    dtlnd = staged / "usr/local/bin/dtlnd"
    env = {k: v for k, v in os.environ.items() if k != "DTLND_MODEL_DIR"}
    r = subprocess.run([str(dtlnd), "--version"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("dtlnd ")
    out = tmp_path / "clean.wav"
    r = subprocess.run([str(dtlnd), "process", str(audio_dir / "airconditioning.wav"), str(out),
                        "--model-dir", str(staged / "var/lib/dtlnd/models")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    y, sr = sf.read(str(out))
    assert sr == 16000 and len(y) == 160000 and np.abs(y).max() > 0.01
    r = subprocess.run([str(dtlnd), "models", "verify", "dtln_ns_quant", "--dir", str(staged / "var/lib/dtlnd/models")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reinstall_keeps_an_edited_config_and_uninstall_leaves_it(staged, models_dir):
    conf = staged / "etc/dtlnd/dtlnd.yaml"
    conf.write_text("mode: aec\n")
    r = subprocess.run([str(REPO / "install.sh"), "--root", str(staged), "--models-from", str(models_dir),
                        "--models", "dtln_ns_quant"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert conf.read_text() == "mode: aec\n"
    assert (staged / "etc/dtlnd/dtlnd.yaml.dist").exists() and "kept your" in r.stdout
    r = subprocess.run([str(REPO / "install.sh"), "--root", str(staged), "--uninstall"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert conf.read_text() == "mode: aec\n"
    left = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert left == ["etc/dtlnd/dtlnd.yaml"]


def test_install_refuses_unknown_options(tmp_path):
    r = subprocess.run([str(REPO / "install.sh"), "--frobnicate"], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "--frobnicate" in r.stderr
