#!/usr/bin/env bash
# Set up dtlnd for development and tests on Debian 12 / Raspberry Pi OS:
# the system libraries, then a virtualenv in .venv with dtlnd installed
# (editable) and the test tools.  Safe to run again.
#
#   ./bootstrap.sh            (as root, or with sudo available)
#   PYTHON=python3.11 ./bootstrap.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# libportaudio2: sounddevice's Linux wheel has no PortAudio of its own.
# libsndfile1: soundfile.  alsa-utils, libasound2-plugins, jackd2: aplay and
# arecord, and the user-space audio rig the tests run the ALSA path through.
# systemd, kmod: systemd-analyze and modprobe, which check the unit and
# the modprobe.d file.
APT_PACKAGES=(libportaudio2 libsndfile1 alsa-utils libasound2-plugins jackd2 systemd kmod python3-venv)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # --no-install-recommends: otherwise jackd2 pulls in graphics drivers.
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "ready: .venv/bin/dtlnd --help; tests: .venv/bin/python -m pytest"
