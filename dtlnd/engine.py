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

from .dsp import BINS, BLOCK, SHIFT, OverlapAdd, RealFFT, SlidingWindow
from .errors import ModelError, UsageError
from .runtime import ModelPair

MODES = ("ns", "aec", "aec+ns")
DEFAULT_MODELS = {"ns": "dtln_ns_quant", "aec": "dtln_aec_128_quant"}
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
    """State and buffers shared by the NS and AEC block loops."""

    channels = 1
    delay = ALGORITHMIC_DELAY

    def __init__(self, pair: ModelPair, fft: str = "auto") -> None:
        self.pair = pair
        m1, m2 = pair.m1, pair.m2
        self._fft = RealFFT(m2.signal, fft)
        self.fft_backend = self._fft.backend
        self._mic = SlidingWindow(self._fft.window)
        self._gain = np.zeros(BINS, np.complex64)
        self._gain_re = self._gain.real
        self._divide = not pair.mask_is_gain
        # Constants as arrays: a numpy scalar operand is boxed on every call.
        self._scale = np.full(BINS, 1.0 / BLOCK, np.float32)  # the irfft's 1/N
        self._n = np.full(BINS, BLOCK, np.float32)
        self._floor = np.full(BINS, BLOCK * 1e-7, np.float32)
        self._den = np.ones(BINS, np.float32)
        self._ola = OverlapAdd()
        self._ola.bind(m2.out)
        # Bound methods and arrays looked up once: on a Pi every attribute
        # lookup on the 8 ms path costs real time.
        self._forward = self._fft.forward
        self._inverse = self._fft.inverse
        self._spectrum = self._fft.spectrum
        self._masked = self._fft.masked
        self._mag = m1.signal
        self._mask = m1.out
        self._st1 = (m1.state_in, m1.state_out)
        self._st2 = (m2.state_in, m2.state_out)
        self._invoke1 = m1.invoke
        self._invoke2 = m2.invoke
        self.pair.reset()

    def _apply_mask(self) -> None:
        """masked = spectrum * mask / 512, as complex64 x complex64 (no casting buffer)."""
        if self._divide:
            # PiDTLN2's model 1 outputs |X| * mask: divide by the magnitude
            # fed in (kept in _den as 512 |X|, clipped away from zero).
            np.divide(self._mask, self._den, out=self._gain_re)
        else:
            np.multiply(self._mask, self._scale, out=self._gain_re)
        np.multiply(self._spectrum, self._gain, out=self._masked)

    def _magnitude(self) -> None:
        np.abs(self._spectrum, out=self._mag)
        if self._divide:
            np.multiply(self._mag, self._n, out=self._den)
            np.maximum(self._den, self._floor, out=self._den)

    def reset(self) -> None:
        """Forget all history: windows, overlap-add tail and LSTM states."""
        self._mic.clear()
        self._ola.clear()
        self.pair.reset()


class NoiseSuppressor(_DTLN):
    """DTLN noise suppression on the microphone alone."""

    def __init__(self, pair: ModelPair, fft: str = "auto") -> None:
        if pair.kind != "ns":
            raise ModelError(f"model {pair.name} is an echo-cancellation pair: use it with mode aec "
                             "or pick a noise-suppression model such as dtln_ns_quant")
        super().__init__(pair, fft)

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
        """Take 128 new samples (``far`` is ignored), write the 128 finished ones."""
        self._mic.push(mic)
        self._forward()
        self._magnitude()
        self._invoke1()
        np.copyto(*self._st1)
        self._apply_mask()
        self._inverse()
        self._invoke2()
        np.copyto(*self._st2)
        self._ola.add(out)


class EchoCanceller(_DTLN):
    """DTLN-aec: microphone plus the far-end (loudspeaker) reference."""

    channels = 2

    def __init__(self, pair: ModelPair, fft: str = "auto") -> None:
        if pair.kind != "aec":
            raise ModelError(f"model {pair.name} is a noise-suppression pair and cannot cancel echo: "
                             "use mode ns, or an AEC model such as dtln_aec_128_quant")
        super().__init__(pair, fft)
        self._far_fft = RealFFT(np.zeros(BLOCK, np.float32), fft)  # only its forward is used
        self._far = SlidingWindow(self._far_fft.window)
        self._far_forward = self._far_fft.forward
        self._far_window = self._far_fft.window
        self._far_spectrum = self._far_fft.spectrum
        self._far_mag = pair.m1.far
        self._far_block = pair.m2.far

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
        """Take 128 microphone and 128 reference samples, write the 128 finished ones."""
        self._mic.push(mic)
        self._far.push(far)
        self._forward()
        self._far_forward()
        self._magnitude()
        np.abs(self._far_spectrum, out=self._far_mag)
        self._invoke1()
        np.copyto(*self._st1)
        self._apply_mask()
        self._inverse()
        np.copyto(self._far_block, self._far_window)
        self._invoke2()
        np.copyto(*self._st2)
        self._ola.add(out)

    def reset(self) -> None:
        super().reset()
        self._far.clear()


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
