#!/usr/bin/env bash
# Set up dtlnd for development and tests on Debian 12 / Raspberry Pi OS:
# the system libraries, then a virtualenv in .venv with dtlnd installed
# (editable) and the test tools.  Safe to run again.
#
#   ./bootstrap.sh            (as root, or with sudo available)
#   PYTHON=python3.11 ./bootstrap.sh
#   DTLND_EXTRAS=test ./bootstrap.sh   (no lint tools, no evaluate extra)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# libportaudio2: sounddevice's Linux wheel has no PortAudio of its own.
# libsndfile1: soundfile.  alsa-utils, libasound2-plugins, jackd2: aplay and
# arecord, and the user-space audio rig the tests run the ALSA path through.
# systemd, kmod: systemd-analyze and modprobe, which check the unit and
# the modprobe.d file.  espeak-ng: the speech of `dtlnd demo`'s test clip.
APT_PACKAGES=(libportaudio2 libsndfile1 alsa-utils libasound2-plugins jackd2 systemd kmod python3-venv espeak-ng)
LOG="$(mktemp -t dtlnd-bootstrap.XXXXXX)"
trap 'rm -f "$LOG"' EXIT
# Quiet when all goes well; the whole log when a step fails.
quiet() { "$@" >>"$LOG" 2>&1 || { cat "$LOG" >&2; echo "bootstrap.sh: failed: $*" >&2; exit 1; }; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    echo "bootstrap.sh: installing ${missing[*]}"
    quiet $sudo apt-get update -qq
    # --no-install-recommends: otherwise jackd2 pulls in graphics drivers.
    quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
# No warning about running as root (containers, CI) nor about a newer pip.
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || quiet "$PYTHON" -m venv .venv
echo "bootstrap.sh: installing dtlnd and its dependencies into .venv"
quiet .venv/bin/python -m pip install -q --upgrade pip
# Development gets every extra the tests use: test (pytest), lint (ruff,
# mypy) and eval (`dtlnd evaluate`: DNSMOS/AECMOS, PESQ, STOI, plots; about
# 580 MB).  The Pi install (install.sh) takes none of them.
EXTRAS="${DTLND_EXTRAS:-test,lint,eval}"
quiet .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
echo "ready: .venv/bin/dtlnd demo; tests: .venv/bin/python -m pytest"
