#!/usr/bin/env bash
# Check the 64-bit Raspberry Pi OS install under emulation: a Debian arm64
# root made with debootstrap, run through qemu-user-static (binfmt_misc),
# dtlnd installed from its wheel with binary-only dependencies from PyPI,
# `dtlnd process` run on a recording, and the output compared with this
# machine's (x86-64) output as an SNR.
#
#   sudo tools/arm64_check.sh [--suite bookworm|trixie] [--work DIR]
#                             [--mirror URL] [--shared DIR] [--host-dtlnd PATH]
#
# Needs root (debootstrap, chroot, mounts) and the Debian packages
# qemu-user-static, binfmt-support and debootstrap.  Slow (tens of minutes:
# every instruction of the arm64 side is emulated), so it stays out of CI.
# The root is kept in WORK/SUITE and reused by the next run.
#
# ai-edge-litert's cpuinfo library reads /proc/cpuinfo and crashes on the
# host's x86 one, so a Raspberry Pi 4's is bind-mounted over it, and qemu
# emulates that Pi's core (QEMU_CPU=cortex-a72).
#
# Exit 0: every pair matches x86 (float >= 60 dB SNR, int8 >= 20 dB: int8
# kernels differ between x86 and arm); 1: a mismatch; 2: a setup step failed.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE=bookworm
WORK=/var/tmp/dtlnd-arm64
MIRROR=http://deb.debian.org/debian
SHARED="${DTLND_SHARED:-$SRC/../shared}"
HOST_DTLND="${HOST_DTLND:-}"
# PAIR:RUNTIME; the float pair also in its ONNX form through onnxruntime.
CHECKS="dtln_ns_float:ai-edge-litert dtln_ns_quant:ai-edge-litert dtln_ns_float:onnxruntime"

fail() { echo "arm64_check: $*" >&2; exit 2; }
say() { echo "arm64_check: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --suite) SUITE="$2"; shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --shared) SHARED="$2"; shift 2 ;;
        --host-dtlnd) HOST_DTLND="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) fail "unknown option $1 (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || fail "run as root (debootstrap, chroot and mounts need it)"
command -v debootstrap >/dev/null || fail "debootstrap is not installed: sudo apt install debootstrap"
[ -x /usr/bin/qemu-aarch64-static ] || fail "qemu-user-static is not installed: sudo apt install qemu-user-static binfmt-support"
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || fail "binfmt_misc has no qemu-aarch64 entry: sudo update-binfmts --enable qemu-aarch64"
[ -f "$SHARED/audio/airconditioning.wav" ] || fail "$SHARED/audio/airconditioning.wav missing: give --shared DIR"
if [ -z "$HOST_DTLND" ]; then
    if [ -x "$SRC/.venv/bin/dtlnd" ]; then HOST_DTLND="$SRC/.venv/bin/dtlnd"; else HOST_DTLND="$(command -v dtlnd || true)"; fi
fi
[ -x "$HOST_DTLND" ] || fail "no x86 dtlnd to compare with: give --host-dtlnd PATH (e.g. .venv/bin/dtlnd)"
HOST_PY="$(dirname "$HOST_DTLND")/python"

ROOTFS="$WORK/$SUITE"
mkdir -p "$WORK"
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    say "debootstrap $SUITE arm64 into $ROOTFS (log: $WORK/$SUITE-debootstrap.log)"
    rm -rf "$ROOTFS"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,libsndfile1,libportaudio2,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/$SUITE-debootstrap.log" 2>&1 \
        || fail "debootstrap failed: see $WORK/$SUITE-debootstrap.log"
fi

# A Raspberry Pi 4 Model B's /proc/cpuinfo (64-bit kernel).
CPUINFO="$WORK/cpuinfo-rpi4"
{
    for n in 0 1 2 3; do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$n"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Revision\t: c03114\nSerial\t\t: 10000000deadbeef\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
} >"$CPUINFO"

MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mount "$@"; MOUNTS+=("${*: -1}"); }
bind -t proc proc "$ROOTFS/proc"
bind --bind "$CPUINFO" "$ROOTFS/proc/cpuinfo"
bind --bind /dev "$ROOTFS/dev"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"

CHECK="$ROOTFS/check"
rm -rf "$CHECK"
mkdir -p "$CHECK/wheel" "$CHECK/models" "$CHECK/out"
say "building the dtlnd wheel"
"$HOST_PY" -m pip wheel -q --no-deps -w "$CHECK/wheel" "$SRC" >"$WORK/wheel.log" 2>&1 \
    || fail "pip wheel failed: see $WORK/wheel.log"
cp "$SHARED"/models/dtln_ns_{float,quant}_[12].tflite "$SHARED"/models/dtln_ns_float_[12].onnx "$CHECK/models/"
cp "$SHARED/audio/airconditioning.wav" "$CHECK/in.wav"
# This machine's CA bundle, so that pip in the root trusts what the host's
# pip trusts (a proxy with its own CA included).
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$CHECK/ca.crt"

in_root() {
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root QEMU_CPU=cortex-a72 PIP_CERT=/check/ca.crt \
        PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 "$@"
}
PYVER="$(in_root python3 -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])')"
say "$SUITE: $PYVER (qemu-user, cortex-a72)"
say "pip install --only-binary :all: dtlnd (log: $WORK/$SUITE-pip.log)"
in_root python3 -m venv /check/venv
start=$(date +%s)
in_root /check/venv/bin/python -m pip install --only-binary :all: --find-links /check/wheel dtlnd \
    >"$WORK/$SUITE-pip.log" 2>&1 || { tail -n 5 "$WORK/$SUITE-pip.log" >&2; fail "pip install failed on $SUITE arm64"; }
say "installed in $(( $(date +%s) - start )) s: $(grep -o 'Successfully installed.*' "$WORK/$SUITE-pip.log" | cut -c 23-)"

status=0
for c in $CHECKS; do
    p="${c%%:*}" rt="${c#*:}"
    start=$(date +%s)
    in_root /check/venv/bin/dtlnd process /check/in.wav "/check/out/$p-$rt.wav" --model "$p" --runtime "$rt" \
        --model-dir /check/models --subtype FLOAT >"$WORK/$SUITE-$p-$rt.log" 2>&1 \
        || { cat "$WORK/$SUITE-$p-$rt.log" >&2; fail "dtlnd process --model $p --runtime $rt failed on $SUITE arm64"; }
    took=$(( $(date +%s) - start ))
    "$HOST_DTLND" process "$CHECK/in.wav" "$CHECK/out/$p-$rt-x86.wav" --model "$p" --runtime "$rt" \
        --model-dir "$CHECK/models" --subtype FLOAT >"$WORK/$SUITE-$p-$rt-x86.log" 2>&1 \
        || { cat "$WORK/$SUITE-$p-$rt-x86.log" >&2; fail "x86 dtlnd process --model $p --runtime $rt failed"; }
    min=60; case "$p" in *quant*) min=20 ;; esac
    "$HOST_PY" - "$CHECK/out/$p-$rt.wav" "$CHECK/out/$p-$rt-x86.wav" "$p ($rt)" "$min" "$SUITE" "$took" <<'EOF' || status=1
import sys
import numpy as np
import soundfile as sf
arm, x86 = (sf.read(f, dtype="float64")[0] for f in sys.argv[1:3])
pair, lowest, suite, took = sys.argv[3], float(sys.argv[4]), sys.argv[5], sys.argv[6]
err = np.sum((arm - x86) ** 2)
snr = float("inf") if err == 0 else 10 * np.log10(np.sum(x86 ** 2) / err)
ok = len(arm) == len(x86) and snr >= lowest
print(f"arm64_check: {suite} {pair}: arm64 vs x86 SNR {snr:.1f} dB (need >= {lowest:.0f}), "
      f"max |diff| {np.max(np.abs(arm - x86)):.2e}, arm64 process took {took} s: {'ok' if ok else 'MISMATCH'}")
sys.exit(0 if ok else 1)
EOF
done
exit $status
