"""ALSA device names mapped to what PortAudio lists."""

from __future__ import annotations

from dtlnd.devices import Device, card_numbers, match_hw

# As PortAudio lists them on a Pi with a ReSpeaker array and snd-aloop loaded.
LISTED = [
    Device(0, "bcm2835 Headphones: - (hw:0,0)", 0, 8, 44100.0),
    Device(1, "ReSpeaker 4 Mic Array (UAC1.0): USB Audio (hw:1,0)", 6, 2, 16000.0),
    Device(2, "Loopback: PCM (hw:2,0)", 32, 32, 44100.0),
    Device(3, "Loopback: PCM (hw:2,1)", 32, 32, 44100.0),
    Device(4, "dtln", 32, 0, 44100.0),
    Device(5, "default", 32, 32, 44100.0),
]
CARDS = """ 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 1 [ArrayUAC10     ]: USB-Audio - ReSpeaker 4 Mic Array (UAC1.0)
                      SEEED ReSpeaker 4 Mic Array (UAC1.0) at usb-3f980000.usb-1.3, full speed
 2 [Loopback       ]: Loopback - Loopback
                      Loopback 1
"""


def test_card_ids_from_proc_asound_cards():
    assert card_numbers(CARDS) == {"headphones": 0, "arrayuac10": 1, "loopback": 2}


def test_alsa_hw_names_map_to_listed_devices():
    cards = card_numbers(CARDS)
    assert match_hw("hw:Loopback,0", LISTED, cards).index == 2
    assert match_hw("hw:CARD=Loopback,DEV=1", LISTED, cards).index == 3
    assert match_hw("plughw:1,0", LISTED, cards).index == 1
    assert match_hw("hw:CARD=ArrayUAC10,DEV=0", LISTED, cards).index == 1
    assert match_hw("hw:2", LISTED, cards).index == 2
    assert match_hw("hw:2,0,0", LISTED, cards).index == 2
    assert match_hw("hw:3,0", LISTED, cards) is None
    assert match_hw("dtln", LISTED, cards) is None


def test_without_proc_asound_the_listed_card_name_is_used():
    # No /proc/asound (a container): the name before ':' stands in for the id.
    assert match_hw("hw:Loopback,1", LISTED, {}).index == 3
    assert match_hw("hw:ArrayUAC10,0", LISTED, {}) is None


def test_open_errors_are_one_line_and_name_a_busy_device():
    """PortAudio's own errors, as sounddevice raises them, become one DeviceError line (exit 69)."""
    import sounddevice as sd

    from dtlnd.devices import open_error

    dev = LISTED[1]
    busy = open_error("input", dev, sd.PortAudioError("Error opening InputStream: Device unavailable", -9985))
    assert busy.exit_status == 69
    assert str(busy) == ("input device 'ReSpeaker 4 Mic Array (UAC1.0): USB Audio (hw:1,0)': Device or resource "
                         "busy: stop the program holding it, or use the dsnoop/pipewire PCM (for the output: "
                         "dmix/pipewire)")
    host = open_error("output", LISTED[2], sd.PortAudioError(
        "Error opening OutputStream: Unanticipated host error", -9999, (0, -16, "Device or resource busy")))
    assert "Device or resource busy: stop the program holding it" in str(host)
    other = open_error("output", LISTED[2], sd.PortAudioError(
        "Error opening OutputStream: Invalid sample rate", -9997))
    assert str(other) == ("output device 'Loopback: PCM (hw:2,0)' could not be opened: Error opening OutputStream: "
                          "Invalid sample rate: check output.device, output.rate and output.channels against "
                          "'dtlnd devices'")
    assert "\n" not in str(busy) + str(host) + str(other)
