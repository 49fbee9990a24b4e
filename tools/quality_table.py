#!/usr/bin/env python3
"""Produce the README's quality table with ``dtlnd evaluate --json`` on the shared recordings.

    .venv/bin/python tools/quality_table.py [--audio ../shared/audio] [--update README.md]

Prints the Markdown table; with ``--update`` it replaces the text between the
``<!-- quality-table -->`` markers of that file (atomically).  Needs the
``eval`` extra.  The synthetic mix (near-end speech + white noise at 5 dB
SNR, seed 5) is generated into a temporary folder and removed afterwards.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
NS_PAIRS = ["dtln_ns_quant", "dtln_ns_float", "pidtln2_ns_dynamic", "pidtln2_ns_5"]
AEC_PAIRS = ["dtln_aec_128_quant", "dtln_aec_256_quant"]
NOISY = "airconditioning.wav"
FAR = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk"
NEAR = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk"
BEGIN, END = "<!-- quality-table -->", "<!-- /quality-table -->"


def evaluate(*args: object) -> list[dict]:
    cmd = [sys.executable, "-m", "dtlnd", "--log-level", "warning", "evaluate", "--json", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode:
        sys.exit(f"quality_table: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return [json.loads(line) for line in r.stdout.splitlines()]


def models(pairs: list[str]) -> list[str]:
    return [a for p in pairs for a in ("--model", p)]


def fmt(row: dict, key: str, digits: int = 2) -> str:
    """``input → output`` of one metric."""
    return f"{row['input'][key]:.{digits}f} → {row['output'][key]:.{digits}f}" if key in row["input"] else \
        f"{row['output'][key]:.{digits}f}"


def synthetic_mix(audio: Path, folder: Path) -> tuple[Path, Path]:
    speech, _ = sf.read(audio / f"{NEAR}_mic.wav", dtype="float32")
    noise = np.random.default_rng(5).standard_normal(len(speech)).astype(np.float32)
    noise *= np.sqrt(np.mean(speech ** 2) / np.mean(noise ** 2) / 10 ** 0.5)
    sf.write(folder / "noisy.wav", speech + noise, 16000, subtype="FLOAT")
    sf.write(folder / "clean.wav", speech, 16000, subtype="FLOAT")
    return folder / "noisy.wav", folder / "clean.wav"


def build(audio: Path) -> str:
    ns = evaluate(audio / NOISY, *models(NS_PAIRS))
    with tempfile.TemporaryDirectory() as tmp:
        noisy, clean = synthetic_mix(audio, Path(tmp))
        mix = evaluate(noisy, "--clean", clean, *models(NS_PAIRS))
    far = evaluate(audio / f"{FAR}_mic.wav", "--ref", audio / f"{FAR}_lpb.wav", "--mode", "aec",
                   *models(AEC_PAIRS))
    near = evaluate(audio / f"{NEAR}_mic.wav", "--ref", audio / f"{NEAR}_lpb.wav", "--mode", "aec",
                    *models(AEC_PAIRS))
    lines = [
        "Noise suppression: DNSMOS P.835 (1–5, higher is better) on `airconditioning.wav`; SI-SDR, "
        "PESQ-WB and STOI on the near-end recording with white noise added at 5 dB SNR "
        "(input → output):",
        "",
        "| pair | DNSMOS SIG | DNSMOS BAK | DNSMOS OVRL | SI-SDR dB (5 dB mix) | PESQ-WB (5 dB mix) "
        "| STOI (5 dB mix) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a, b in zip(ns, mix):
        lines.append(f"| `{a['model']}` | {fmt(a, 'dnsmos_sig')} | {fmt(a, 'dnsmos_bak')} | {fmt(a, 'dnsmos_ovrl')} "
                     f"| {fmt(b, 'si_sdr_db', 1)} | {fmt(b, 'pesq')} | {fmt(b, 'stoi', 3)} |")
    lines += [
        "",
        "Echo cancellation on the AEC-challenge recordings: AECMOS echo and degradation MOS (1–5, higher "
        "is better; talk type detected from the levels), ERLE over the far-end-only stretches:",
        "",
        "| pair | far-end single talk: AECMOS echo | ERLE dB | near-end single talk: AECMOS degradation "
        "| near-end: DNSMOS OVRL |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f, n in zip(far, near):
        assert f["talk"] == "st" and n["talk"] == "nst", (f["talk"], n["talk"])
        lines.append(f"| `{f['model']}` | {fmt(f, 'aecmos_echo')} | {f['output']['erle_db']:.1f} "
                     f"| {fmt(n, 'aecmos_deg')} | {fmt(n, 'dnsmos_ovrl')} |")
    lines += tradeoff(audio)
    lines += ["", "Reproduce: `.venv/bin/pip install -e '.[eval]' && DTLND_MODEL_DIR=../shared/models "
              ".venv/bin/python tools/quality_table.py --audio ../shared/audio --update README.md`."]
    return "\n".join(lines)


def has_limit() -> bool:
    """Whether this checkout's engine has ``max_suppression`` (issue 8 item 3)."""
    sys.path.insert(0, str(REPO))
    from dtlnd import engine

    return "max_suppression" in inspect.signature(engine.build).parameters


def tradeoff(audio: Path) -> list[str]:
    """Rows for ``--max-suppression``: what a limit gives back (speech, ASR-friendliness) and costs."""
    if not has_limit():
        return []
    lines = ["", "With `--max-suppression DB` (the input mixed back in at 10^(−DB/20)), input → output:", "",
             "| recording | pair, limit | DNSMOS SIG | DNSMOS BAK | DNSMOS OVRL | AECMOS echo | ERLE dB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for db in (12, 20):
        (r,) = evaluate(audio / NOISY, "--max-suppression", db)
        lines.append(f"| `{NOISY}` | `{r['model']}` | {fmt(r, 'dnsmos_sig')} | {fmt(r, 'dnsmos_bak')} "
                     f"| {fmt(r, 'dnsmos_ovrl')} | – | – |")
    for db in (20, 30):
        (r,) = evaluate(audio / f"{FAR}_mic.wav", "--ref", audio / f"{FAR}_lpb.wav", "--mode", "aec",
                        "--max-suppression", db)
        lines.append(f"| far-end single talk | `{r['model']}` | {fmt(r, 'dnsmos_sig')} | {fmt(r, 'dnsmos_bak')} "
                     f"| {fmt(r, 'dnsmos_ovrl')} | {fmt(r, 'aecmos_echo')} | {r['output']['erle_db']:.1f} |")
    return lines


def update(path: Path, table: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"quality_table: {path} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audio", type=Path, default=Path(os.environ.get("DTLND_SHARED", REPO.parent / "shared"))
                    / "audio", help="the shared recordings (default: ../shared/audio or $DTLND_SHARED/audio)")
    ap.add_argument("--update", type=Path, metavar="README", help="replace the table between the markers")
    args = ap.parse_args()
    table = build(args.audio)
    if args.update:
        update(args.update, table)
    print(table)


if __name__ == "__main__":
    main()
