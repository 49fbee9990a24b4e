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
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

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
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$SRC"
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
"$VENV/bin/dtlnd" config check "$ETC/dtlnd.yaml" >/dev/null

# 4. Models, sha256-checked, written atomically.
say "installing models: $MODELS"
fetch=("$VENV/bin/dtlnd" models fetch --dir "$MODEL_DIR" --no-progress)
[ -n "$MODELS_FROM" ] && fetch+=(--from "$MODELS_FROM")
[ -n "$BASE_URL" ] && fetch+=(--base-url "$BASE_URL")
# shellcheck disable=SC2086
"${fetch[@]}" $MODELS

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
if [ $START = 1 ]; then
    systemctl restart dtlnd.service
    say "started; check it with: dtlnd run --measure --duration 10 (stop the service first) or journalctl -u dtlnd"
else
    say "installed and enabled; start it with: sudo systemctl start dtlnd"
fi
