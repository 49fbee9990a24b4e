"""Framing and FFTs for the 512/128 DTLN block loop, on fixed buffers.

FFTW (through pyfftw) is used when it imports: an ``execute()`` on arrays
planned once costs well under a microsecond here, against several for
``numpy.fft``.  Each `RealFFT` owns its arrays, so two transforms never
share an output buffer (a ``pyfftw.builders`` object returns the same array
on every call, which silently overwrites an earlier result).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import numpy as np

from .constants import BINS, BLOCK, SHIFT


def _import_pyfftw() -> Any:
    """``pyfftw`` (an optional speed-up), or None; without the SciPy interfaces dtlnd never uses.

    ``import pyfftw`` imports ``pyfftw.interfaces``, which imports
    ``scipy.fft`` and ``scipy.fftpack`` when SciPy is installed (it is, with
    the eval extra): 20 MB of resident memory and 0.15 s of start-up for
    nothing.  Hiding those two names while pyfftw imports makes its
    interfaces skip them; anything that imports SciPy later gets it whole.
    """
    hidden = [name for name in ("scipy.fft", "scipy.fftpack") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "not importable", for this import only
    try:
        import pyfftw
    except ImportError:
        return None
    finally:
        for name in hidden:
            del sys.modules[name]
    return pyfftw


pyfftw = _import_pyfftw()


_NUMPY_FFT_OUT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def fft_backends() -> list[str]:
    """Backends usable here, fastest first."""
    return (["pyfftw"] if pyfftw is not None else []) + ["numpy"]


def default_backend() -> str:
    return fft_backends()[0]


class RealFFT:
    """rfft of ``window`` into ``spectrum``; unnormalised irfft of ``masked`` into ``out``.

    The caller writes ``window`` (float32[512]) and ``masked``
    (complex64[257]) in place; `forward` and `inverse` allocate nothing with
    FFTW.  The inverse is *not* divided by 512: the engine folds that into
    the mask it multiplies anyway, which saves a pass per block.  It may
    overwrite ``masked`` (FFTW's c2r destroys its input).  With ``out`` None
    the transform is forward-only (the far-end reference): no inverse plan,
    no ``masked`` buffer, and ``inverse`` is None.
    """

    def __init__(self, out: Optional[np.ndarray], backend: str = "auto") -> None:
        if backend == "auto":
            backend = default_backend()
        if backend not in fft_backends():
            raise ValueError(f"FFT backend {backend!r} is not available here: use one of {fft_backends()}")
        self.backend = backend
        self.out = out
        self.inverse: Optional[Callable[[], None]] = None
        if backend == "pyfftw":
            self.window = pyfftw.empty_aligned(BLOCK, dtype=np.float32)
            self.spectrum = pyfftw.empty_aligned(BINS, dtype=np.complex64)
            # FFTW_ESTIMATE: MEASURE picks plans by timing, so two processes
            # could round differently (and quantized models amplify that).
            # The window slides, so the forward transform must preserve it;
            # the masked spectrum is scratch, so c2r may destroy it.  The
            # inverse writes straight into ``out`` (e.g. model 2's input).
            self.forward = pyfftw.FFTW(self.window, self.spectrum, flags=("FFTW_ESTIMATE",),
                                       threads=1).execute
            if out is not None:
                self.masked = pyfftw.empty_aligned(BINS, dtype=np.complex64)
                self.inverse = pyfftw.FFTW(self.masked, out, direction="FFTW_BACKWARD",
                                           flags=("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT"), threads=1).execute
        else:
            self.window = np.zeros(BLOCK, dtype=np.float32)
            self.spectrum = np.zeros(BINS, dtype=np.complex64)
            self.forward = self._forward_numpy
            if out is not None:
                self.masked = np.zeros(BINS, dtype=np.complex64)
                self.inverse = self._inverse_numpy
        # Planning may scribble on the arrays.
        self.window.fill(0.0)
        if out is not None:
            self.masked.fill(0.0)
            out.fill(0.0)

    if _NUMPY_FFT_OUT:
        def _forward_numpy(self) -> None:
            np.fft.rfft(self.window, out=self.spectrum)

        def _inverse_numpy(self) -> None:
            np.fft.irfft(self.masked, n=BLOCK, norm="forward", out=self.out)
    else:  # numpy < 2 (32-bit Pi OS with tflite-runtime): no out= arguments
        def _forward_numpy(self) -> None:
            self.spectrum[:] = np.fft.rfft(self.window)

        def _inverse_numpy(self) -> None:
            self.out[:] = np.fft.irfft(self.masked, n=BLOCK, norm="forward")  # type: ignore[index]


class SlidingWindow:
    """The 512-sample analysis window, advanced 128 samples per hop.

    The window *is* the FFT's input array.  The engine advances it with two
    1-D copies on ``views`` = (old, keep, new): ``old[:] = keep`` then
    ``new[:] = hop`` (numpy copies overlapping same-direction 1-D ranges
    without a temporary).
    """

    def __init__(self, window: np.ndarray) -> None:
        self.window = window
        self.views = (window[: BLOCK - SHIFT], window[SHIFT:], window[BLOCK - SHIFT:])

    def clear(self) -> None:
        self.window.fill(0.0)


class OverlapAdd:
    """Overlap-add of 512-sample blocks from ``block`` (e.g. model 2's output tensor).

    Two 384-sample accumulators take turns, so each hop is three ufunc
    calls on precomputed views and nothing overlaps in memory.
    """

    def __init__(self, block: np.ndarray) -> None:
        keep = BLOCK - SHIFT
        self._acc = (np.zeros(keep, np.float32), np.zeros(keep, np.float32))
        head, mid, tail = block[:SHIFT], block[SHIFT:keep], block[keep:]
        self._steps = tuple(
            (cur[:SHIFT], head, cur[SHIFT:], mid, nxt[: keep - SHIFT], nxt[keep - SHIFT:], tail)
            for cur, nxt in (self._acc, self._acc[::-1])
        )
        self._turn = 0

    def add(self, out: np.ndarray) -> None:
        """Add the block and write the 128 samples it finishes to ``out``."""
        cur_head, head, cur_rest, mid, nxt_rest, nxt_tail, tail = self._steps[self._turn]
        np.add(cur_head, head, out)
        np.add(cur_rest, mid, nxt_rest)
        np.copyto(nxt_tail, tail)
        self._turn ^= 1

    def clear(self) -> None:
        for acc in self._acc:
            acc.fill(0.0)
        self._turn = 0
