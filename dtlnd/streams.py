"""PortAudio streams whose callbacks work in arrays made once.

`sounddevice.InputStream` and friends wrap every callback in Python: a
NumPy array made over PortAudio's buffer, a `CallbackFlags` object and a
frame of ``_wrap_callback``, each call.  At one callback every 8 ms, with
the caches cold between them, that cost 15-35 us per callback here, about
as much as the clock bridge's whole read.  `open_stream` uses
sounddevice's documented extension point instead (`sounddevice._StreamBase`
with a CFFI function pointer as callback): the C callback copies the input
into an array made when the stream opens, calls the Python callback with
it, and copies the output array into PortAudio's buffer (``ffi.memmove``:
one C call each way, no object made).

`open_writer` opens an output stream in PortAudio's blocking mode, for a
caller that writes it from another stream's callback (`dtlnd.push`): its
write and write-available calls go straight to PortAudio with the array
bound once, no sounddevice wrapper in between.

The Python callback's duties are the ones `dtlnd.audio` states; here it
gets ``(indata, frames, time, status)`` (output: ``outdata``; duplex: both),
like sounddevice's, except that ``time`` is None and ``status`` is
PortAudio's ``PaStreamCallbackFlags`` as an int (`INPUT_OVERFLOW`,
`OUTPUT_UNDERFLOW`).  The arrays are the same on every call: read
``indata`` and fill ``outdata`` before returning, keep no reference to
either.  A callback that raises, or a call with another frame count than
``blocksize`` (PortAudio never makes one for a fixed block size), aborts
the stream: its ``finished_callback`` runs, and the supervisor reopens it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from . import devices

INPUT_OVERFLOW = 0x2  # paInputOverflow
OUTPUT_UNDERFLOW = 0x4  # paOutputUnderflow
OUTPUT_UNDERFLOWED = -9980  # paOutputUnderflowed: Pa_WriteStream's "the device ran dry since the last write"
_CONTINUE, _ABORT = 0, 2  # paContinue, paAbort


def open_stream(kind: str, callback: Callable[..., None], *, device: Any, samplerate: int, channels: Any,
                dtype: Any, blocksize: int, latency: Any,
                finished_callback: Optional[Callable[[], None]] = None) -> Any:
    """Open a stopped ``kind`` ("input", "output" or "duplex") stream; sounddevice's parameters.

    For "duplex", ``device``, ``channels`` and ``dtype`` are (input, output)
    pairs.  Raises `sounddevice.PortAudioError` as sounddevice does.
    """
    sd = devices.sd()
    ffi = sd._ffi
    pairs = kind == "duplex"
    in_ch, out_ch = channels if pairs else ((channels, 0) if kind == "input" else (0, channels))
    in_type, out_type = dtype if pairs else ((dtype, None) if kind == "input" else (None, dtype))
    indata = np.zeros((blocksize, in_ch), in_type) if in_ch else None
    outdata = np.zeros((blocksize, out_ch), out_type) if out_ch else None
    memmove = ffi.memmove
    null = ffi.NULL
    if indata is not None and outdata is not None:
        in_buf, in_bytes = ffi.from_buffer(indata), indata.nbytes
        out_buf, out_bytes = ffi.from_buffer(outdata), outdata.nbytes

        def c_callback(iptr: Any, optr: Any, frames: int, _time: Any, status: int, _user: Any) -> int:
            if frames != blocksize:
                return _ABORT
            if iptr == null:
                indata.fill(0)
            else:
                memmove(in_buf, iptr, in_bytes)
            callback(indata, outdata, frames, None, status)
            memmove(optr, out_buf, out_bytes)
            return _CONTINUE
    elif indata is not None:
        in_buf, in_bytes = ffi.from_buffer(indata), indata.nbytes

        def c_callback(iptr: Any, optr: Any, frames: int, _time: Any, status: int, _user: Any) -> int:
            if frames != blocksize:
                return _ABORT
            memmove(in_buf, iptr, in_bytes)
            callback(indata, frames, None, status)
            return _CONTINUE
    else:
        assert outdata is not None
        out_buf, out_bytes = ffi.from_buffer(outdata), outdata.nbytes

        def c_callback(iptr: Any, optr: Any, frames: int, _time: Any, status: int, _user: Any) -> int:
            if frames != blocksize:
                return _ABORT
            callback(outdata, frames, None, status)
            memmove(optr, out_buf, out_bytes)
            return _CONTINUE

    pointer = ffi.callback("PaStreamCallback", c_callback, error=_ABORT)
    stream = sd._StreamBase(kind, samplerate=samplerate, blocksize=blocksize, device=device, channels=channels,
                            dtype=dtype, latency=latency, callback=pointer, finished_callback=finished_callback,
                            wrap_callback=None)
    # sounddevice keeps only a cast of the pointer: the callback object and its arrays live with the stream.
    stream._dtlnd_callback = (pointer, indata, outdata)
    return stream


class Writer:
    """A stopped blocking-mode output stream and the two calls its writer makes (see `open_writer`)."""

    def __init__(self, stream: Any, data: np.ndarray) -> None:
        sd = devices.sd()
        self.stream = stream
        #: the array `write` sends; fill it before each call
        self.data = data
        ptr, buf, frames = stream._ptr, sd._ffi.from_buffer(data), len(data)
        available, write = sd._lib.Pa_GetStreamWriteAvailable, sd._lib.Pa_WriteStream
        #: frames the device's buffer has room for, or a negative PortAudio error code
        self.room: Callable[[], int] = lambda: available(ptr)
        #: send ``data``: 0, `OUTPUT_UNDERFLOWED`, or another (negative) PortAudio error code.  It waits only
        #: when the buffer has less room than ``len(data)``: call it after `room` said there is.
        self.write: Callable[[], int] = lambda: write(ptr, buf, frames)


def open_writer(*, device: Any, samplerate: int, channels: int, dtype: str, blocksize: int, latency: Any) -> Writer:
    """Open a stopped blocking-mode output stream, written ``blocksize`` frames at a time; sounddevice's parameters.

    Raises `sounddevice.PortAudioError` as sounddevice does.
    """
    sd = devices.sd()
    stream = sd._StreamBase("output", samplerate=samplerate, blocksize=blocksize, device=device, channels=channels,
                            dtype=dtype, latency=latency, callback=None, wrap_callback=None)
    return Writer(stream, np.zeros((blocksize, channels), dtype))
