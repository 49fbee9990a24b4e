"""Settings: the YAML file, command-line overrides, and one-line errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from dtlnd import config
from dtlnd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def load_text(tmp_path, text, **overrides):
    f = tmp_path / "dtlnd.yaml"
    f.write_text(text)
    return config.load(f, overrides)


def test_shipped_config_file_is_the_defaults():
    assert config.load(REPO / "config" / "dtlnd.yaml") == config.Settings()


def test_missing_default_file_means_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(config.paths, "CONFIG_FILE", tmp_path / "absent.yaml")
    assert config.load() == config.Settings()


def test_file_values_and_overrides(tmp_path):
    s = load_text(tmp_path, "mode: aec\ninput:\n  device: hw:CARD=ArrayUAC10,DEV=0\n  channels: 6\n  "
                  "channel: 1\nlatency: 0.016\n", **{"output.format": "FLOAT_LE", "threads": 2})
    assert s.mode == "aec" and s.input.device == "hw:CARD=ArrayUAC10,DEV=0"
    assert s.input_channels == 6 and s.ref_channel == 5 and s.input.channel == 1
    assert s.latency == 0.016 and s.output.format == "FLOAT_LE" and s.threads == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mode = "ns"  # frozen


@pytest.mark.parametrize("text, overrides, words", [
    ("mode: [ns\n", {}, ["invalid YAML", "line 2"]),
    ("models: x\n", {}, ["models", "did you mean 'model'"]),
    ("input:\n  chanel: 1\n", {}, ["input.chanel", "input.channel"]),
    ("threads: many\n", {}, ["threads", "integer", "many"]),
    ("mode: nc\n", {}, ["mode", "ns, aec, aec+ns"]),
    ("output:\n  format: S24_LE\n", {}, ["output.format", "S16_LE"]),
    ("latency: soon\n", {}, ["latency", "seconds"]),
    ("", {"input.channel": 5}, ["input.channel", "out of range"]),
    ("mode: aec\ninput:\n  channels: 1\n", {}, ["input.channels", "second channel"]),
    ("mode: aec\ninput:\n  channels: 2\n  ref_channel: 0\n", {}, ["ref_channel", "both channel 0"]),
    ("- just\n- a list\n", {}, ["mapping"]),
    ("input: 3\n", {}, ["input", "mapping"]),
])
def test_bad_settings_are_one_line_naming_the_key(tmp_path, text, overrides, words):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, text, **overrides)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg
    assert err.value.exit_status == 78


def test_config_check_prints_the_effective_settings(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mode: aec\nmodel: dtln_aec_256_quant\n")
    r = subprocess.run([sys.executable, "-m", "dtlnd", "config", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "model: dtln_aec_256_quant" in r.stdout and "ref_channel: null" in r.stdout
    f.write_text("mdoe: aec\n")
    r = subprocess.run([sys.executable, "-m", "dtlnd", "config", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 78
    assert r.stderr.strip().count("\n") == 0 and "did you mean 'mode'" in r.stderr


def test_every_error_is_reported_at_once_one_per_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, "mode: nc\nthreads: 0\noutput:\n  format: S24_LE\nbufer_blocks: 3\n")
    lines = str(err.value).splitlines()
    assert len(lines) == 4, lines
    for words, line in zip(["mode", "threads", "output.format", "did you mean 'buffer_blocks'"], lines):
        assert words in line
    f = tmp_path / "dtlnd.yaml"
    r = subprocess.run([sys.executable, "-m", "dtlnd", "config", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 78
    assert len(r.stderr.strip().splitlines()) == 4
    assert all(line.startswith("dtlnd: error: ") for line in r.stderr.strip().splitlines())


@pytest.mark.parametrize("text", ["input:\n", "input: null\n", "input:\n  # device: hw:1,0\n", ""])
def test_an_empty_section_plus_an_override_works(tmp_path, text):
    s = load_text(tmp_path, text + "mode: ns\n", **{"input.device": "rig_mic_in", "input.rate": 48000})
    assert s.input.device == "rig_mic_in" and s.input.rate == 48000 and s.input.channel == 0


def test_ranges_and_choices_come_from_the_schema():
    by_name = {k.name: k for k in config.schema()}
    assert by_name["threads"].range == (1, 64) and by_name["mode"].choices == ("ns", "aec", "aec+ns")
    assert all(k.doc for k in by_name.values()), [k.name for k in by_name.values() if not k.doc]
    flags = [k.flag for k in by_name.values() if k.flag]
    assert len(flags) == len(set(flags))
