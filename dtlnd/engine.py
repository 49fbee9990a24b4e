"""The DTLN block engines: noise suppression, echo cancellation, and both.

A *hop processor* takes one 128-sample hop (plus the far-end hop for echo
cancellation) and writes 128 enhanced samples, 384 samples (three hops)
after the input they belong to: each block's output is overlap-added, so a
sample is final only once the three later blocks have added theirs.  This is
the real-time path: it allocates nothing and works on the interpreters' own
tensors.

`BlockStream` wraps a hop processor for chunks of any size (files,
resampled devices).  To return exactly as many samples as it is given and
stay bit-identical for every chunking, it holds one hop back, so its output
trails the input by the hop processor's delay plus 128 samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from .constants import BINS, BLOCK, DEFAULT_MODELS, MODES, SHIFT
from .dsp import OverlapAdd, RealFFT, SlidingWindow
from .errors import ModelError, UsageError
from .runtime import ModelPair

ALGORITHMIC_DELAY = 3 * SHIFT


class HopProcessor(Protocol):
    """What the audio path drives: one 128-sample hop at a time."""

    #: 1 (microphone) or 2 (microphone + far-end reference)
    channels: int
    #: samples from a hop's input to the output it belongs to
    delay: int

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None: ...

    def reset(self) -> None: ...


class _DTLN:
    """Buffers, tensors and the hop function shared by the NS and AEC loops.

    ``process_hop`` is a closure over local names built once in
    `_build_hop`: on a Pi each attribute lookup, keyword argument or method
    call on the 8 ms path costs real time, and numpy ufuncs take their
    output array positionally for the same reason.
    """

    channels = 1
    delay = ALGORITHMIC_DELAY

    def __init__(self, pair: ModelPair, fft: str = "auto") -> None:
        self.pair = pair
        self._fft = RealFFT(pair.m2.signal, fft)
        self.fft_backend = self._fft.backend
        self._mic = SlidingWindow(self._fft.window)
        self._ola = OverlapAdd(pair.m2.out)
        if pair.kind == "aec":
            self._far_fft = RealFFT(np.zeros(BLOCK, np.float32), fft)  # only its forward is used
            self._far = SlidingWindow(self._far_fft.window)
        self.process_hop = self._build_hop()
        self.pair.reset()

    def _build_hop(self):
        m1, m2, fft = self.pair.m1, self.pair.m2, self._fft
        copyto, absolute, multiply, divide, maximum = np.copyto, np.absolute, np.multiply, np.divide, np.maximum
        win_old, win_keep, win_new = self._mic.views
        forward, inverse, spectrum, masked = fft.forward, fft.inverse, fft.spectrum, fft.masked
        mag, mask, invoke1, invoke2 = m1.signal, m1.out, m1.invoke, m2.invoke
        st1_in, st1_out, st2_in, st2_out = m1.state_in, m1.state_out, m2.state_in, m2.state_out
        gain = np.zeros(BINS, np.complex64)
        gain_re = gain.real
        # Constants as arrays: a numpy scalar operand is boxed on every call.
        scale = np.full(BINS, 1.0 / BLOCK, np.float32)  # the irfft's 1/N, folded into the mask
        n_bins = np.full(BINS, BLOCK, np.float32)
        floor = np.full(BINS, BLOCK * 1e-7, np.float32)
        den = np.ones(BINS, np.float32)
        # PiDTLN2's model 1 outputs |X| * mask: the gain is that over 512 |X|.
        divide_by_mag = not self.pair.mask_is_gain
        ola = self._ola

        def model_1_to_2() -> None:
            """mask -> masked spectrum -> model 2's input, states carried over."""
            invoke1()
            copyto(st1_in, st1_out)
            if divide_by_mag:
                divide(mask, den, gain_re)
            else:
                multiply(mask, scale, gain_re)
            multiply(spectrum, gain, masked)
            inverse()

        def magnitude() -> None:
            absolute(spectrum, mag)
            if divide_by_mag:
                multiply(mag, n_bins, den)
                maximum(den, floor, out=den)  # positional out is deprecated for maximum

        if self.pair.kind == "ns":
            def process_hop(mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
                copyto(win_old, win_keep)
                copyto(win_new, mic)
                forward()
                magnitude()
                model_1_to_2()
                invoke2()
                copyto(st2_in, st2_out)
                ola.add(out)
            return process_hop

        far_old, far_keep, far_new = self._far.views
        far_window, far_forward, far_spectrum = self._far_fft.window, self._far_fft.forward, self._far_fft.spectrum
        far_mag, far_block = m1.far, m2.far

        def process_hop(mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
            copyto(win_old, win_keep)
            copyto(win_new, mic)
            copyto(far_old, far_keep)
            copyto(far_new, far)
            forward()
            far_forward()
            magnitude()
            absolute(far_spectrum, far_mag)
            model_1_to_2()
            copyto(far_block, far_window)
            invoke2()
            copyto(st2_in, st2_out)
            ola.add(out)
        return process_hop

    def reset(self) -> None:
        """Forget all history: windows, overlap-add tail and LSTM states."""
        self._mic.clear()
        if self.pair.kind == "aec":
            self._far.clear()
        self._ola.clear()
        self.pair.reset()


class NoiseSuppressor(_DTLN):
    """DTLN noise suppression on the microphone alone (``far`` is ignored)."""

    def __init__(self, pair: ModelPair, fft: str = "auto") -> None:
        if pair.kind != "ns":
            raise ModelError(f"model {pair.name} is an echo-cancellation pair: use it with mode aec "
                             "or pick a noise-suppression model such as dtln_ns_quant")
        super().__init__(pair, fft)


class EchoCanceller(_DTLN):
    """DTLN-aec: microphone plus the far-end (loudspeaker) reference."""

    channels = 2

    def __init__(self, pair: ModelPair, fft: str = "auto") -> None:
        if pair.kind != "aec":
            raise ModelError(f"model {pair.name} is a noise-suppression pair and cannot cancel echo: "
                             "use mode ns, or an AEC model such as dtln_aec_128_quant")
        super().__init__(pair, fft)


class Chain:
    """Echo cancellation, then noise suppression on its output (mode ``aec+ns``)."""

    channels = 2

    def __init__(self, first: HopProcessor, second: HopProcessor) -> None:
        self.stages = (first, second)
        self.delay = first.delay + second.delay
        self._mid = np.zeros(SHIFT, np.float32)
        self._first = first.process_hop
        self._second = second.process_hop

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
        self._first(mic, far, self._mid)
        self._second(self._mid, None, out)

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()


def build(mode: str, model: Optional[str] = None, ns_model: Optional[str] = None,
          model_dir: Optional[Path] = None, runtime: str = "auto", threads: int = 1,
          fft: str = "auto") -> HopProcessor:
    """Load the model pair(s) for ``mode`` and return its hop processor.

    ``model`` is the pair of the first stage (NS for ``ns``, AEC otherwise);
    ``ns_model`` the NS pair of ``aec+ns``.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    first = model or DEFAULT_MODELS["ns" if mode == "ns" else "aec"]
    pair = ModelPair.load(first, model_dir, runtime, threads)
    if mode == "ns":
        return NoiseSuppressor(pair, fft)
    aec = EchoCanceller(pair, fft)
    if mode == "aec":
        return aec
    ns_pair = ModelPair.load(ns_model or DEFAULT_MODELS["ns"], model_dir, runtime, threads)
    return Chain(aec, NoiseSuppressor(ns_pair, fft))


class BlockStream:
    """Any-size chunks in, as many samples out, bit-identical for every chunking.

    The output trails the input by ``delay`` = the processor's delay + 128:
    a sample's hop can only be processed once the hop is complete, and a
    chunk of 1 sample must still be answered with 1 sample.
    """

    def __init__(self, processor: HopProcessor) -> None:
        self.processor = processor
        self.channels = processor.channels
        self.delay = processor.delay + SHIFT
        self._mic = np.zeros(SHIFT, np.float32)
        self._far = np.zeros(SHIFT, np.float32) if processor.channels == 2 else None
        self._out = np.zeros(SHIFT, np.float32)
        self._fill = 0

    def process(self, mic: np.ndarray, far: Optional[np.ndarray] = None,
                out: Optional[np.ndarray] = None) -> np.ndarray:
        """Feed ``mic`` (and ``far``, same length, for AEC); return the enhanced samples."""
        n = len(mic)
        if self._far is not None and (far is None or len(far) != n):
            raise UsageError("echo cancellation needs a far-end reference as long as the microphone signal")
        if out is None:
            out = np.empty(n, np.float32)
        pos = 0
        while pos < n:
            f = self._fill
            k = min(SHIFT - f, n - pos)
            self._mic[f:f + k] = mic[pos:pos + k]
            if self._far is not None:
                self._far[f:f + k] = far[pos:pos + k]
            out[pos:pos + k] = self._out[f:f + k]
            pos += k
            self._fill = f + k
            if self._fill == SHIFT:
                self.processor.process_hop(self._mic, self._far, self._out)
                self._fill = 0
        return out

    def reset(self) -> None:
        self.processor.reset()
        self._out.fill(0.0)
        self._fill = 0
