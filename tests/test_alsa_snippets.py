"""The files in alsa/, checked with the real alsa-lib on a machine without
sound hardware (no /dev/snd needed).

Needs ``aplay``/``arecord`` (Debian ``alsa-utils``, which brings
``libasound2``) and ``modprobe`` (``kmod``). Without them these tests skip,
or fail when ``DTLND_REQUIRE_TOOLS=1`` (CI).

Every test runs alsa-utils with ALSA_CONFIG_PATH pointing at a temporary
file: ``<confdir:alsa.conf>`` (the system's own config, as on a real
machine) followed by includes of the snippets, and HOME in a temp folder
so no ~/.asoundrc leaks in.

The PCMs that touch hardware (hw, dmix, dsnoop) cannot open here. They are
checked by their definitions and by opening them up to the card lookup. The
PCMs built on top of them (dtln, dtlnd_play, dtlnd_aec_in, default) are
opened for real, unchanged, after only the hardware PCMs are redefined as
``null``/``file`` stand-ins.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ALSA = REPO / "alsa"
CONF_D = ALSA / "asound.conf.d"
SNIPPETS = sorted(CONF_D.glob("*.conf"))
NO_CARD = "DtlndTestNoSuchCard"
TIMEOUT = 60  # seconds; a graph that spins fails instead of hanging the run

# Reads fields of expanded PCM definitions through alsa-lib itself.
PROBE = r"""
import ctypes, ctypes.util, json, sys
lib = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
vp = ctypes.c_void_p
assert lib.snd_config_update() >= 0, "alsa-lib could not load its config"
top = vp.in_dll(lib, "snd_config")
out = {}
for spec in sys.argv[1:]:
    name, _, key = spec.partition(":")
    conf, node, val = vp(), vp(), ctypes.c_char_p()
    if lib.snd_config_search_definition(top, b"pcm", name.encode(), ctypes.byref(conf)) < 0:
        out[spec] = "<no such PCM>"
        continue
    found = (lib.snd_config_search(conf, key.encode(), ctypes.byref(node)) == 0
             and lib.snd_config_get_ascii(node, ctypes.byref(val)) == 0)
    out[spec] = val.value.decode() if found else None
    lib.snd_config_delete(conf)
print(json.dumps(out))
"""


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path:
        return path
    msg = f"{tool} not found (Debian: apt-get install {package})"
    if os.environ.get("DTLND_REQUIRE_TOOLS", "") not in ("", "0"):
        pytest.fail(msg)
    pytest.skip(msg)


def _env(folder: Path, *includes: Path, extra: str = "") -> dict[str, str]:
    """An environment whose alsa-lib config is alsa.conf + includes + extra."""
    folder.mkdir(parents=True, exist_ok=True)
    top = folder / "asound.conf"
    top.write_text("<confdir:alsa.conf>\n" + "".join(f"<{p}>\n" for p in includes) + extra)
    home = folder / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"), "ALSA_CONFIG_PATH": str(top),
            "LC_ALL": "C"}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _names(listing: str) -> set[str]:
    return {line.strip() for line in listing.splitlines() if line and not line[0].isspace()}


def _probe(env: dict[str, str], *specs: str) -> dict[str, str | None]:
    res = subprocess.run([sys.executable, "-c", PROBE, *specs], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _s16(path: Path) -> tuple[int, ...]:
    data = path.read_bytes()
    return struct.unpack(f"<{len(data) // 2}h", data)


def _stand_ins(folder: Path) -> str:
    """Hardware PCMs redefined: null sources, file sinks (raw S16 in the files)."""
    return (
        "pcm.!dtlnd_mic { type null }\n"
        "pcm.!dtlnd_loop_rec { type null }\n"
        "pcm.!dtlnd_ref_rec { type null }\n"
        f'pcm.!dtlnd_speaker {{ type file slave.pcm null file "{folder}/speaker.raw" format raw }}\n'
        f'pcm.!dtlnd_ref_play {{ type file slave.pcm null file "{folder}/ref.raw" format raw }}\n'
    )


def test_snippets_exist():
    assert [p.name for p in SNIPPETS] == ["50-dtlnd.conf", "51-dtlnd-aec.conf",
                                          "59-dtlnd-default.conf"]


def test_snippets_parse_and_list_their_pcms(tmp_path):
    aplay, arecord = _require("aplay", "alsa-utils"), _require("arecord", "alsa-utils")
    base = _env(tmp_path / "base")
    env = _env(tmp_path / "dtlnd", *SNIPPETS)
    for tool, expected in ((aplay, {"dtlnd_play", "dtlnd_speaker", "default"}),
                           (arecord, {"dtln", "dtlnd_mic", "dtlnd_aec_in", "default"})):
        before, after = _run([tool, "-L"], base), _run([tool, "-L"], env)
        print(f"\n{Path(tool).name} -L lists: {sorted(_names(after.stdout) - _names(before.stdout))}")
        assert after.returncode == 0
        assert expected <= _names(after.stdout)
        # No new "ALSA lib ..." complaint compared with the plain system config.
        assert after.stderr == before.stderr, after.stderr


def test_a_broken_snippet_is_noticed(tmp_path):
    """Negative control for the test above."""
    aplay = _require("aplay", "alsa-utils")
    broken = tmp_path / "broken.conf"
    broken.write_text(SNIPPETS[0].read_text().replace("type plug", "type plug {", 1))
    res = _run([aplay, "-L"], _env(tmp_path / "b", broken))
    assert "ALSA lib" in res.stderr and "dtln" not in _names(res.stdout)


def test_definitions_pair_the_loopback_cables_and_agree_on_formats(tmp_path):
    _require("aplay", "alsa-utils")  # libasound2 comes with it
    env = _env(tmp_path, *SNIPPETS)
    hw = {name: (dev, sub) for name, dev, sub in (
        ("dtlnd_loop_play", "0", "0"), ("dtlnd_loop_rec", "1", "0"),   # cable 0: dtlnd -> dtln
        ("dtlnd_ref_play", "0", "1"), ("dtlnd_ref_rec", "1", "1"))}    # cable 1: reference
    ref = "slave.pcm.slave.pcm.slaves.ref.pcm"  # dtlnd_play's reference branch
    expected = {
        **{f"{n}:type": "hw" for n in hw}, **{f"{n}:card": "Loopback" for n in hw},
        **{f"{n}:device": d for n, (d, _) in hw.items()},
        **{f"{n}:subdevice": s for n, (_, s) in hw.items()},
        "dtln:type": "plug", "dtln:slave.pcm": "dtlnd_loop_rec",
        "dtln:slave.rate": "16000", "dtln:slave.channels": "1",
        "dtlnd_mic:type": "dsnoop", "dtlnd_speaker:type": "dmix",
        "dtlnd_play:type": "plug", "dtlnd_play:slave.pcm.type": "route",
        "dtlnd_play:slave.pcm.slave.pcm.type": "multi",
        "dtlnd_play:slave.pcm.slave.pcm.slaves.spk.pcm": "dtlnd_speaker",
        f"dtlnd_play:{ref}.slave.pcm": "dtlnd_ref_play",
        "dtlnd_aec_in:type": "plug", "dtlnd_aec_in:slave.pcm.type": "multi",
        "dtlnd_aec_in:slave.pcm.slaves.mic.pcm": "dtlnd_mic",
        "dtlnd_aec_in:slave.pcm.slaves.ref.pcm": "dtlnd_ref_rec",
        "default:type": "asym", "default:playback.pcm": "dtlnd_play",
        "default:capture.pcm": "dtln",
    }
    got = _probe(env, *expected)
    assert got == expected
    # multi needs one format for both slaves of dtlnd_aec_in: the mic (dsnoop)
    # and the reference cable, whose format dtlnd_play's branch pins.
    same = [(f"dtlnd_mic:slave.{k}", f"dtlnd_play:{ref}.slave.{k}") for k in
            ("rate", "format", "channels")]
    got = _probe(env, *[s for pair in same for s in pair],
                 "dtlnd_mic:ipc_key", "dtlnd_speaker:ipc_key")
    print(f"\nmic vs reference: {got}")
    for a, b in same:
        assert got[a] is not None and got[a] == got[b], (a, b)
    assert got["dtlnd_mic:ipc_key"] != got["dtlnd_speaker:ipc_key"]


def test_hardware_pcms_get_as_far_as_the_card_lookup(tmp_path):
    """All fields accepted; only the (absent) card stops them. The card
    overrides use the syntax alsa/README.md gives for picking cards."""
    aplay, arecord = _require("aplay", "alsa-utils"), _require("arecord", "alsa-utils")
    overrides = "".join(f"pcm.{n}.card {NO_CARD}\n" for n in
                        ("dtlnd_loop_play", "dtlnd_loop_rec", "dtlnd_ref_play", "dtlnd_ref_rec"))
    overrides += "".join(f'pcm.{n}.slave.pcm "hw:CARD={NO_CARD},DEV=0"\n'
                         for n in ("dtlnd_mic", "dtlnd_speaker"))
    env = _env(tmp_path, *SNIPPETS, extra=overrides)
    for tool, name in ((aplay, "dtlnd_loop_play"), (aplay, "dtlnd_ref_play"),
                       (aplay, "dtlnd_speaker"), (arecord, "dtlnd_loop_rec"),
                       (arecord, "dtlnd_ref_rec"), (arecord, "dtlnd_mic")):
        res = _run([tool, "-q", "-D", name, "-t", "raw", "-f", "S16_LE", "-r", "16000",
                    "-s", "16", "/dev/zero" if tool == aplay else "/dev/null"], env)
        assert res.returncode != 0, name
        assert f"Cannot get card index for {NO_CARD}" in res.stderr, (name, res.stderr)
        assert "Unknown" not in res.stderr and "Invalid" not in res.stderr, (name, res.stderr)


@pytest.mark.parametrize("channels, frame, mix", [(2, (1000, 3000), 2000), (1, (1000,), 1000)],
                         ids=["stereo", "mono"])
def test_dtlnd_play_feeds_speaker_and_reference(tmp_path, channels, frame, mix):
    """The player's audio reaches the speaker as L/R and the reference cable
    as a 16 kHz mono mix (resampled by the plug in dtlnd_play).

    Played at 44.1 kHz. With the unclocked null stand-ins, an exact 3:1 rate
    ratio (48 kHz in, 16 kHz reference) can leave multi's available space at
    0 forever (null only moves when written to) and aplay spins; seen with
    960-, 4800- and 6000-frame periods. Real cards move on their own.
    """
    aplay = _require("aplay", "alsa-utils")
    env = _env(tmp_path, *SNIPPETS, extra=_stand_ins(tmp_path))
    rate = 44100
    src = tmp_path / "in.raw"
    src.write_bytes(struct.pack(f"<{channels}h", *frame) * rate)
    res = _run([aplay, "-q", "-D", "dtlnd_play", "-t", "raw", "-f", "S16_LE", "-r", str(rate),
                "-c", str(channels), str(src)], env)
    assert res.returncode == 0, res.stderr
    speaker, ref = _s16(tmp_path / "speaker.raw"), _s16(tmp_path / "ref.raw")
    both = frame * 2 if channels == 1 else frame
    assert speaker[:2 * rate] == both * rate  # then drain padding (silence)
    middle = sorted(ref[2000:14000])
    print(f"\n{channels} ch: speaker {len(speaker) // 2} frames, reference {len(ref)} frames, "
          f"median {middle[len(middle) // 2]}")
    assert 16000 <= len(ref) <= 16000 * 1.3
    assert abs(middle[len(middle) // 2] - mix) <= 2 and abs(middle[0] - mix) <= 50


def test_default_plays_through_dtlnd_play(tmp_path):
    aplay = _require("aplay", "alsa-utils")
    env = _env(tmp_path, *SNIPPETS, extra=_stand_ins(tmp_path))
    src = tmp_path / "in.raw"
    src.write_bytes(struct.pack("<2h", 100, 300) * 4410)
    res = _run([aplay, "-q", "-D", "default", "-t", "raw", "-f", "S16_LE", "-r", "44100",
                "-c", "2", str(src)], env)
    assert res.returncode == 0, res.stderr
    assert _s16(tmp_path / "speaker.raw")[:2] == (100, 300)
    assert (tmp_path / "ref.raw").stat().st_size > 0


@pytest.mark.parametrize("pcm", ["dtln", "default"])
def test_consumers_record_any_format(tmp_path, pcm):
    """dtln converts the 16 kHz mono cable to what the consumer asks for."""
    arecord = _require("arecord", "alsa-utils")
    env = _env(tmp_path, *SNIPPETS, extra=_stand_ins(tmp_path))
    out = tmp_path / "out.wav"
    res = _run([arecord, "-q", "-D", pcm, "-f", "S16_LE", "-r", "48000", "-c", "2",
                "-s", "4800", str(out)], env)
    assert res.returncode == 0, res.stderr
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == \
            (48000, 2, 2, 4800)


def test_dtlnd_aec_in_opens_as_two_channels(tmp_path):
    """What the daemon opens in AEC mode: 2 channels, 16 kHz, float32."""
    arecord = _require("arecord", "alsa-utils")
    env = _env(tmp_path, *SNIPPETS, extra=_stand_ins(tmp_path))
    out = tmp_path / "aec.raw"
    res = _run([arecord, "-q", "-D", "dtlnd_aec_in", "-t", "raw", "-f", "FLOAT_LE",
                "-r", "16000", "-c", "2", "-s", "1600", str(out)], env)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size == 1600 * 2 * 4


def test_modprobe_options(tmp_path):
    modprobe = _require("modprobe", "kmod")
    res = _run([modprobe, "--showconfig", "-C", str(ALSA / "modprobe.d")], {"PATH": "/usr/bin:/bin"})
    lines = [ln for ln in res.stdout.splitlines() if "snd_aloop" in ln]
    print(f"\n{lines}")
    assert lines == ["options snd_aloop index=10 id=Loopback pcm_substreams=2"]
    # The commented-out timer_source= line, once enabled, is one more value
    # for the first card (dots: a comma would make it an array of values).
    conf = tmp_path / "modprobe.d"
    conf.mkdir()
    text = (ALSA / "modprobe.d" / "snd-aloop.conf").read_text()
    (conf / "snd-aloop.conf").write_text(text.replace("#options snd-aloop timer", "options snd-aloop timer"))
    res = _run([modprobe, "--showconfig", "-C", str(conf)], {"PATH": "/usr/bin:/bin"})
    timer = [ln for ln in res.stdout.splitlines() if "timer_source=" in ln]
    assert timer == ["options snd_aloop timer_source=hw:ArrayUAC10.0.1"]


def test_modules_load_file():
    lines = [ln.strip() for ln in (ALSA / "modules-load.d" / "snd-aloop.conf").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith(("#", ";"))]
    assert lines == ["snd-aloop"]
