#!/usr/bin/env bash
# Install dtlnd on a Raspberry Pi (or any Debian-like system) in one command:
#
#   sudo ./install.sh                     install, enable and start the service
#   sudo ./install.sh --uninstall         remove what install.sh installed
#                                         (keeps /etc/dtlnd/dtlnd.yaml)
#   ./install.sh --root DIR               stage every file under DIR without
#                                         touching the system (packaging, tests)
#
# Options:
#   --models-from DIR   install the models from a local folder (offline)
#   --base-url URL      fetch the models from a mirror instead of upstream
#   --models "A B"      model pairs to install (default: dtln_ns_quant
#                       dtln_aec_128_quant dtln_aec_256_quant)
#   --no-start          install and enable, but do not start the service
#   --no-apt            do not install Debian packages
#   --check-platform    say what this system gets (runtime, sources, Python
#                       packages) and exit: 0 supported, 69 not
#
# Which Raspberry Pi OS gets what (the userland decides, as dpkg reports it:
# a 32-bit Pi OS often runs a 64-bit kernel, so uname -m can say aarch64):
#
#   Pi OS            Python  TF-Lite runtime          how it installs
#   Bookworm 64-bit  3.11    ai-edge-litert           every package a PyPI wheel
#   Trixie 64-bit    3.13    ai-edge-litert           every package a PyPI wheel
#   Bookworm 32-bit  3.11    tflite-runtime 2.14      tflite-runtime from PyPI; numpy<2, pyfftw,
#                                                     soxr, cffi, pyyaml from piwheels
#   Trixie 32-bit    3.13    none: not supported      tflite-runtime has armv7l wheels for
#                                                     Python 3.9 and 3.11 only, ai-edge-litert
#                                                     none; install.sh stops before it starts
#
# Not on 32-bit: ai-edge-litert and onnxruntime (no armv7l wheels).  Other
# Debian-based systems on x86-64 or arm64 install like 64-bit Pi OS.
# DTLND_FAKE_PLATFORM="CODENAME DPKG_ARCH PYTHON_VERSION" (e.g. "trixie armhf
# 3.13") stands in for this system's, for tests.
#
# What goes where:
#   /opt/dtlnd/venv                  the package and its Python dependencies
#   /usr/local/bin/dtlnd             a link to the venv's dtlnd
#   /etc/dtlnd/dtlnd.yaml            the configuration (never overwritten; a
#                                    newer default lands next to it as .dist)
#   /var/lib/dtlnd/models            the model files (sha256-checked)
#   /etc/systemd/system/dtlnd.service
#   /etc/modules-load.d, /etc/modprobe.d: snd-aloop at boot
#   /etc/alsa/conf.d/50-dtlnd.conf, 51-dtlnd-aec.conf: named PCMs (see alsa/README.md)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT=""
UNINSTALL=0
START=1
APT=1
MODELS_FROM=""
BASE_URL=""
MODELS="dtln_ns_quant dtln_aec_128_quant dtln_aec_256_quant"
PYTHON="${PYTHON:-python3}"
CHECK_PLATFORM=0
PIWHEELS=https://www.piwheels.org/simple

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        --models-from) [ $# -ge 2 ] || die "--models-from needs a folder"; MODELS_FROM="$2"; shift 2 ;;
        --base-url) [ $# -ge 2 ] || die "--base-url needs a URL"; BASE_URL="$2"; shift 2 ;;
        --models) [ $# -ge 2 ] || die "--models needs pair names"; MODELS="$2"; shift 2 ;;
        --no-start) START=0; shift ;;
        --no-apt) APT=0; shift ;;
        --check-platform) CHECK_PLATFORM=1; shift ;;
        -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# 0. What this platform gets, decided before anything is touched.
if [ -n "${DTLND_FAKE_PLATFORM:-}" ]; then
    read -r CODENAME ARCH PYVER <<<"$DTLND_FAKE_PLATFORM"
else
    CODENAME="$( (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true)"
    ARCH="$(dpkg --print-architecture 2>/dev/null || uname -m)"
    PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
        || die "$PYTHON not found: install python3 (sudo apt install python3 python3-venv)"
fi
WHERE="${CODENAME:-unknown release} ${ARCH} with Python ${PYVER}"
PIP_EXTRA=()
PIP_MACHINE=""
[ $UNINSTALL = 1 ] || case "$ARCH" in
    amd64|x86_64|arm64|aarch64)
        PLAN="ai-edge-litert; every Python package a wheel from PyPI" ;;
    armhf|armv7l)
        case "$PYVER" in
            3.9|3.11) PLAN="tflite-runtime 2.14 from PyPI; numpy<2, pyfftw, soxr, cffi and pyyaml from piwheels"
                      PIP_EXTRA=(--extra-index-url "$PIWHEELS")
                      PIP_MACHINE=armv7l ;;
            *) echo "install.sh: $WHERE: not supported: no TF-Lite runtime exists for 32-bit ARM with" \
                    "Python $PYVER (tflite-runtime has armv7l wheels for 3.9 and 3.11 only); install" \
                    "64-bit Raspberry Pi OS, or 32-bit Bookworm" >&2
               exit 69 ;;
        esac ;;
    *) echo "install.sh: $WHERE: not supported: no TF-Lite runtime wheels for $ARCH (use x86-64, arm64," \
            "or 32-bit ARM with Python 3.9 or 3.11)" >&2
       exit 69 ;;
esac

# The dependencies pip will install, from pyproject.toml, for this machine;
# on 32-bit ARM evaluated for armv7l: under a 64-bit kernel pip's own
# platform_machine says aarch64 and would pick ai-edge-litert.
deps() {
    "$1" - "$SRC/pyproject.toml" "$2" <<'EOF'
import sys
try:
    import tomllib
except ImportError:  # Python 3.9 and 3.10
    from pip._vendor import tomli as tomllib
from pip._vendor.packaging.requirements import Requirement

with open(sys.argv[1], "rb") as f:
    reqs = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
env = {"platform_machine": sys.argv[2]} if sys.argv[2] else None
print(" ".join(str(r).split(";")[0].replace(" ", "") for r in reqs if r.marker is None or r.marker.evaluate(env)))
EOF
}

if [ $CHECK_PLATFORM = 1 ]; then
    say "$WHERE: supported: $PLAN"
    say "Python packages: $(deps "$PYTHON" "$PIP_MACHINE" 2>/dev/null || echo "(listing them needs pip)")"
    exit 0
fi
[ $UNINSTALL = 1 ] || say "$WHERE: $PLAN"

SYSTEM=1
[ -n "$ROOT" ] && SYSTEM=0
if [ $SYSTEM = 1 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo ./install.sh), or stage with --root DIR"
fi

OPT="$ROOT/opt/dtlnd"
VENV="$OPT/venv"
ETC="$ROOT/etc/dtlnd"
MODEL_DIR="$ROOT/var/lib/dtlnd/models"
UNIT_DIR="$ROOT/etc/systemd/system"
ALSA_CONF_DIR="$ROOT/etc/alsa/conf.d"
BIN="$ROOT/usr/local/bin"
INSTALLED_ALSA=(modules-load.d/snd-aloop.conf modprobe.d/snd-aloop.conf)
INSTALLED_CONF=(50-dtlnd.conf 51-dtlnd-aec.conf)

uninstall() {
    if [ $SYSTEM = 1 ] && command -v systemctl >/dev/null; then
        systemctl disable --now dtlnd.service 2>/dev/null || true
    fi
    rm -f "$UNIT_DIR/dtlnd.service" "$BIN/dtlnd"
    for f in "${INSTALLED_ALSA[@]}"; do rm -f "$ROOT/etc/$f"; done
    for f in "${INSTALLED_CONF[@]}"; do rm -f "$ALSA_CONF_DIR/$f"; done
    rm -rf "$OPT" "$MODEL_DIR"
    rmdir "$ROOT/var/lib/dtlnd" 2>/dev/null || true
    rm -f "$ETC/dtlnd.yaml.dist"
    if [ $SYSTEM = 1 ]; then
        systemctl daemon-reload 2>/dev/null || true
        if id dtlnd >/dev/null 2>&1; then userdel dtlnd || true; fi
    fi
    say "removed; your configuration stays in $ETC (delete it by hand if you want)"
}

if [ $UNINSTALL = 1 ]; then
    uninstall
    exit 0
fi

# 1. System packages: PortAudio (sounddevice has none of its own), libsndfile,
#    venv support, alsa-utils for arecord/aplay and modprobe's config.
if [ $SYSTEM = 1 ] && [ $APT = 1 ]; then
    say "installing Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends libportaudio2 libsndfile1 python3-venv alsa-utils >/dev/null
fi

# 2. The package in its own venv.  No --system-site-packages: Pi OS ships
#    numpy 1.x, and ai-edge-litert needs numpy 2.
say "installing dtlnd into $VENV"
mkdir -p "$OPT"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ -n "$PIP_MACHINE" ]; then
    # shellcheck disable=SC2046
    "$VENV/bin/python" -m pip install -q "${PIP_EXTRA[@]}" $(deps "$VENV/bin/python" "$PIP_MACHINE")
    "$VENV/bin/python" -m pip install -q --no-deps "$SRC"
else
    "$VENV/bin/python" -m pip install -q "$SRC"
fi
mkdir -p "$BIN"
ln -sf "$VENV/bin/dtlnd" "$BIN/dtlnd"

# 3. Configuration: never overwrite the user's file.
mkdir -p "$ETC"
if [ ! -e "$ETC/dtlnd.yaml" ]; then
    install -m 0644 "$SRC/config/dtlnd.yaml" "$ETC/dtlnd.yaml"
elif ! cmp -s "$SRC/config/dtlnd.yaml" "$ETC/dtlnd.yaml"; then
    install -m 0644 "$SRC/config/dtlnd.yaml" "$ETC/dtlnd.yaml.dist"
    say "kept your $ETC/dtlnd.yaml; the new default is $ETC/dtlnd.yaml.dist"
fi

# 4. Models, sha256-checked, written atomically.
say "installing models: $MODELS"
fetch=("$VENV/bin/dtlnd" models fetch --dir "$MODEL_DIR" --no-progress)
[ -n "$MODELS_FROM" ] && fetch+=(--from "$MODELS_FROM")
[ -n "$BASE_URL" ] && fetch+=(--base-url "$BASE_URL")
# shellcheck disable=SC2086
"${fetch[@]}" $MODELS
# The file, and the model pairs it names (loaded as the service will).  A
# file that does not work yet is said, and the service is not started.
CONFIG_OK=1
if ! problem="$(DTLND_MODEL_DIR="$MODEL_DIR" "$VENV/bin/dtlnd" config check "$ETC/dtlnd.yaml" 2>&1 >/dev/null)"; then
    CONFIG_OK=0
    say "$ETC/dtlnd.yaml does not work yet: ${problem#dtlnd: error: }"
fi

# 5. ALSA: snd-aloop at boot, and the named PCMs.
for f in "${INSTALLED_ALSA[@]}"; do install -D -m 0644 "$SRC/alsa/$f" "$ROOT/etc/$f"; done
for f in "${INSTALLED_CONF[@]}"; do install -D -m 0644 "$SRC/alsa/asound.conf.d/$f" "$ALSA_CONF_DIR/$f"; done

# 6. The service.
install -D -m 0644 "$SRC/systemd/dtlnd.service" "$UNIT_DIR/dtlnd.service"

if [ $SYSTEM = 0 ]; then
    say "staged under $ROOT (no user, no service started)"
    exit 0
fi

if ! id dtlnd >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /var/lib/dtlnd --shell /usr/sbin/nologin \
        --groups audio dtlnd
fi
chown -R dtlnd:dtlnd /var/lib/dtlnd
modprobe snd-aloop 2>/dev/null || say "could not load snd-aloop now (it loads at the next boot)"
systemctl daemon-reload
systemctl enable dtlnd.service
if [ $CONFIG_OK = 0 ]; then
    say "installed and enabled, not started: fix $ETC/dtlnd.yaml (dtlnd config check), then: sudo systemctl start dtlnd"
elif [ $START = 1 ]; then
    systemctl restart dtlnd.service
    say "started; check it with: dtlnd status (or journalctl -u dtlnd)"
else
    say "installed and enabled; start it with: sudo systemctl start dtlnd"
fi
