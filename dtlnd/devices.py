"""Audio devices: resolve what users write to what PortAudio lists.

Users write sounddevice indices and name substrings, and ALSA names:
``hw:Loopback,0``, ``hw:CARD=Loopback,DEV=0``, ``plughw:1,0``, ``default``
or a PCM from asound.conf.  PortAudio lists hardware devices as
``Loopback: PCM (hw:2,0)`` and configured PCMs by name, so ALSA card names
are mapped to card numbers through /proc/asound (or the listed card name).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from .constants import RATE
from .errors import DeviceError

_HW = re.compile(r"^(?:plug)?hw:(?:CARD=)?([^,]+)(?:,(?:DEV=)?(\d+))?(?:,(?:SUBDEV=)?\d+)?$", re.IGNORECASE)
_LISTED_HW = re.compile(r"\(hw:(\d+),(\d+)\)$")


_jack_server: Optional[tuple[int, int]] = None  # the JACK server PortAudio joined at init


PORTAUDIO_MISSING = "PortAudio is not installed: sudo apt install libportaudio2"


def no_devices(kind: str = "") -> DeviceError:
    """What to say when PortAudio lists no (``kind``: input or output) device at all."""
    what = f"audio {kind} devices" if kind else "audio devices"
    return DeviceError(f"no {what} found: connect one, check 'aplay -l' and 'arecord -l', "
                       "and that this user is in the audio group")


def sd():
    """sounddevice, imported on first use (it loads PortAudio and enumerates devices)."""
    global _jack_server
    try:
        import sounddevice
    except OSError:  # sounddevice's wheel for Linux has no PortAudio of its own
        raise DeviceError(PORTAUDIO_MISSING) from None

    if _jack_server is None:
        _jack_server = _jack_server_identity()
    return sounddevice


def _jack_server_identity() -> Optional[tuple[int, int]]:
    """Inode and time of the JACK2 server's socket, when PortAudio's JACK host API could join one.

    jackd2 makes ``/dev/shm/jack_<server>_<uid>_0`` when it starts: a
    missing or different file means the server PortAudio joined has gone.
    """
    name = os.environ.get("JACK_DEFAULT_SERVER", "default")
    try:
        st = os.stat(f"/dev/shm/jack_{name}_{os.getuid()}_0")
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def reinitialize() -> bool:
    """Restart PortAudio so that its device list is fresh (after an unplug).

    Not once the JACK server that PortAudio's JACK host API joined at
    initialisation (a jackd running on the machine) has gone: PortAudio 19.6
    aborts in Pa_Terminate then (PortAudio #819).  The old list is kept (ALSA
    PCM names stay valid; only a USB card that comes back under a new number
    is missed) and PortAudio's own shutdown at exit is skipped too, for the
    same reason, and after a close that blocked (`wedged`).  Returns whether it restarted.
    """
    global _jack_server
    s = sd()
    if _wedged:
        return False
    if _jack_server is not None and _jack_server_identity() != _jack_server:
        atexit.unregister(s._exit_handler)
        return False
    s._terminate()
    s._initialize()
    _jack_server = _jack_server_identity()
    return True


_wedged = False  # a stream close blocked in the driver: PortAudio must not be terminated


def wedged() -> None:
    """A stream could not be closed: never terminate PortAudio again (it would block on that stream).

    The device list is kept as it is, and PortAudio's shutdown at exit is skipped.
    """
    global _wedged
    if not _wedged:
        _wedged = True
        atexit.unregister(sd()._exit_handler)


def exit_now_if_wedged(status: int) -> None:
    """After a close that blocked in the driver, end the process at once with ``status``.

    That close is still blocked in its helper thread, inside libjack or
    ALSA.  The interpreter's shutdown and the C libraries' exit handlers
    would run beside it and tear the JACK client down under it: the
    process then died of SIGSEGV (on the rig, after SIGSTOPs with two
    consumers).  So the logs and stdout are flushed and the process ends
    with ``os._exit``; nothing is left to write by then.
    """
    if not _wedged:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def unload_unused_plugins() -> bool:
    """Let ALSA unload the plugin libraries that PortAudio's device scan loaded and no open stream uses.

    PortAudio's initialisation opens every PCM the ALSA configuration names,
    so each installed plugin's library stays mapped for good: with
    libasound2-plugins that is libavcodec and its codecs (a52, lavrate),
    libpulse, glib and more: 11 MB of RSS on the test rig.  ALSA's
    ``snd_config_update_free_global`` (what ``Pa_Terminate`` calls) frees its
    global configuration and closes the plugin libraries no open PCM holds;
    the next open reads the configuration again.  Call it from the thread
    that opens streams, after they opened.  Returns whether it ran: not
    without ALSA, and not after a close that blocked (`wedged`), which may
    still be inside ALSA.
    """
    if _wedged:
        return False
    try:
        asound = ctypes.CDLL("libasound.so.2")
    except OSError:
        return False
    asound.snd_config_update_free_global()
    return True


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: float


def list_devices() -> list[Device]:
    out = []
    for i, d in enumerate(sd().query_devices()):
        out.append(Device(i, d["name"], d["max_input_channels"], d["max_output_channels"],
                          d["default_samplerate"]))
    return out


def card_numbers(text: Optional[str] = None) -> dict[str, int]:
    """ALSA card id -> number, from /proc/asound/cards (empty without kernel sound)."""
    cards: dict[str, int] = {}
    if text is None:
        try:
            text = Path("/proc/asound/cards").read_text()
        except OSError:
            return cards
    for m in re.finditer(r"^\s*(\d+)\s+\[(\S+)\s*\]", text, re.MULTILINE):
        cards[m.group(2).lower()] = int(m.group(1))
    return cards


def match_hw(spec: str, devices: list[Device], cards: Optional[dict[str, int]] = None) -> Optional[Device]:
    """The listed ``(hw:N,D)`` device an ALSA hardware name means, if any."""
    m = _HW.match(spec)
    if not m:
        return None
    card, dev = m.group(1), int(m.group(2) or 0)
    if cards is None:
        cards = card_numbers()
    number: Optional[int] = int(card) if card.isdigit() else cards.get(card.lower())
    for d in devices:
        lm = _LISTED_HW.search(d.name)
        if not lm or int(lm.group(2)) != dev:
            continue
        if number is not None and int(lm.group(1)) == number:
            return d
        if number is None and d.name.split(":", 1)[0].strip().lower() == card.lower():
            return d
    return None


def resolve(spec: Union[str, int], kind: str) -> Device:
    """The PortAudio device for ``spec`` with ``kind`` ('input' or 'output') channels."""
    devices = list_devices()
    need = "max_input_channels" if kind == "input" else "max_output_channels"
    usable = [d for d in devices if getattr(d, need) > 0]
    text = str(spec).strip()
    found: Optional[Device] = None
    if isinstance(spec, int) or text.isdigit():
        idx = int(text)
        found = next((d for d in devices if d.index == idx), None)
    else:
        found = (next((d for d in usable if d.name == text), None)
                 or match_hw(text, usable)
                 or _unique_substring(text, usable)
                 or next((d for d in devices if d.name == text), None))  # exists, wrong direction
    if not usable:
        raise no_devices(kind)
    if found is None or getattr(found, need) == 0:
        names = "; ".join(f"{d.index}: {d.name}" for d in usable) or "none"
        why = "has no " + kind + " channels" if found is not None else "not found"
        raise DeviceError(f"{kind} device {spec!r} {why}: set {kind}.device to one of [{names}] "
                          "(see 'dtlnd devices')")
    return found


def _unique_substring(text: str, devices: list[Device]) -> Optional[Device]:
    hits = [d for d in devices if text.lower() in d.name.lower()]
    if len(hits) > 1:
        exact = [d for d in hits if d.name.lower().startswith(text.lower())]
        if len(exact) == 1:
            return exact[0]
        names = "; ".join(f"{d.index}: {d.name}" for d in hits)
        raise DeviceError(f"device {text!r} matches several devices [{names}]: use a longer name or the index")
    return hits[0] if hits else None


def supports_rate(device: Device, kind: str, rate: int, channels: int = 1) -> bool:
    check = sd().check_input_settings if kind == "input" else sd().check_output_settings
    try:
        check(device=device.index, samplerate=rate, channels=channels, dtype="float32")
    except Exception:
        return False
    return True


def pick_rate(device: Device, kind: str, wanted: Optional[int], channels: int) -> int:
    """16 kHz when the device can, else its own default rate (resampled in process)."""
    if wanted is not None:
        if not supports_rate(device, kind, wanted, channels):
            raise DeviceError(f"{kind} device {device.name!r} cannot run at {wanted} Hz with {channels} "
                              f"channel(s): remove {kind}.rate to use its default")
        return wanted
    if supports_rate(device, kind, RATE, channels):
        return RATE
    native = int(device.default_rate)
    if not supports_rate(device, kind, native, channels):
        limit = device.max_input_channels if kind == "input" else device.max_output_channels
        raise DeviceError(f"{kind} device {device.name!r} cannot open {channels} channel(s) at 16000 or "
                          f"{native} Hz (it has {limit}): check {kind}.channels")
    return native


_EBUSY = 16  # errno: ALSA's snd_pcm_open on a PCM another program holds; PortAudio: paDeviceUnavailable


def open_error(kind: str, device: Device, exc: Exception) -> DeviceError:
    """One line for a stream that PortAudio could not open or start (``exc``: its PortAudioError).

    A device another program holds (ALSA ``hw:`` PCMs are exclusive) says so
    and what to do; anything else names the device and PortAudio's reason.
    """
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    code = args[1] if len(args) > 1 and isinstance(args[1], int) else None
    host: tuple[Any, ...] = args[2] if len(args) > 2 and isinstance(args[2], tuple) and len(args[2]) > 2 else ()
    text = str(args[0]) if args else str(exc)
    busy = code == -9985 or (host and host[1] == -_EBUSY) or "busy" in text.lower()
    if busy:
        return DeviceError(f"{kind} device {device.name!r}: Device or resource busy: stop the program holding "
                           "it, or use the dsnoop/pipewire PCM (for the output: dmix/pipewire)")
    reason = f"{text} (host error {host[1]}: {host[2]})" if host else text
    return DeviceError(f"{kind} device {device.name!r} could not be opened: {reason}: check {kind}.device, "
                       f"{kind}.rate and {kind}.channels against 'dtlnd devices'")


def describe() -> str:
    """The table ``dtlnd devices`` prints."""
    rows = [f"{'idx':>3}  {'in':>3} {'out':>3}  {'16k in':>6} {'16k out':>7}  name"]
    for d in list_devices():
        ins = ("yes" if d.max_input_channels and supports_rate(d, "input", RATE)
               else ("no" if d.max_input_channels else "-"))
        outs = ("yes" if d.max_output_channels and supports_rate(d, "output", RATE)
                else ("no" if d.max_output_channels else "-"))
        rows.append(f"{d.index:>3}  {d.max_input_channels:>3} {d.max_output_channels:>3}  {ins:>6} {outs:>7}  "
                    f"{d.name} (default {int(d.default_rate)} Hz)")
    return "\n".join(rows)
