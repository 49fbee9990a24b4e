"""The DTLN block engines: noise suppression, echo cancellation, and both.

A *hop processor* takes one 128-sample hop of microphone (plus, when
``channels`` is 2, the far-end reference) and writes 128 enhanced samples
that belong to the input of ``delay`` samples earlier: 384 (three hops) for
one stage, since each block's output is overlap-added and a sample is final
only once the three later blocks have added theirs; 768 for ``aec+ns``; one
hop more when pipelined (`dtlnd.pipeline`).

The real-time contract of ``process_hop(mic, far, out)``, the call an audio
callback makes every 8 ms:

* The caller passes float32 arrays of 128 samples (``far`` is ignored when
  ``channels`` is 1) and may reuse them: the processor copies its input in
  and keeps no reference to any of the three arrays.
* One thread calls it at a time.  Each stage's fault counters
  (``nonfinite``, ``resets``) are written only by the thread that runs the
  stage: the caller's, or for the NS stage of a pipelined ``aec+ns`` the
  worker's; other threads may read them.
* It does no I/O, never logs, and raises nothing for any input values:
  NaN, Inf and far over-range samples are mended by the fault guard (see
  `_DTLN`), and the output is always finite and within ±``OUT_PEAK`` (with
  ``max_suppression``, plus the attenuated input, itself within ±``IN_PEAK``).  It
  allocates nothing, except on the guard's fault paths (bad input or a
  broken model state), which may create small temporaries, and on the
  first block after a pipelined processor's start or reset (one int).
* It blocks only in the pipelined processor, and only while the worker is
  still running the previous block's second half.
* Its time is the two ``invoke()`` calls plus framing, FFTs and checks
  (1.2–1.6x the bare invokes here, see ``dtlnd bench``); nothing bounds it
  on a slow machine: the caller counts late blocks.

``reset``, ``close`` and `build` are not real-time calls: they may allocate,
log, or wait for a worker thread.

`BlockStream` wraps a hop processor for chunks of any size (files,
resampled devices).  To return exactly as many samples as it is given and
stay bit-identical for every chunking, it holds one hop back, so its output
trails the input by the hop processor's delay plus 128 samples.  It slices
its arguments, which creates small view objects on every call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .constants import BINS, BLOCK, DEFAULT_MODELS, MODES, SHIFT
from .dsp import OverlapAdd, RealFFT, SlidingWindow
from .errors import ModelError, UsageError
from .hop import HopProcessor
from .runtime import ModelPair

log = logging.getLogger("dtlnd")

ALGORITHMIC_DELAY = 3 * SHIFT
#: Output samples are kept within ±OUT_PEAK (+18 dBFS), far above any real
#: output.  A hop of energy (sum of squares) at most OUT_ENERGY has no sample
#: beyond it; only a louder hop is checked in full and clipped.
OUT_PEAK = 8.0
OUT_ENERGY = OUT_PEAK * OUT_PEAK
#: Input samples are kept within ±IN_PEAK (+60 dBFS): a hop whose energy
#: exceeds IN_ENERGY (none of real audio does) is mended and clipped, so the
#: models and the output check never see values near float32's overflow.
#: (Samples beyond ~1e19 overflow the input check itself, which then takes
#: the same path, but numpy may print one RuntimeWarning about it.)
IN_PEAK = 1000.0
IN_ENERGY = IN_PEAK * IN_PEAK


class _DTLN:
    """Buffers, tensors and the hop function shared by the NS and AEC loops.

    The hop is four closures over local names built once in `_build_parts`
    (on a Pi each attribute lookup, keyword argument or method call on the
    8 ms path costs real time, and numpy ufuncs take their output array
    positionally for the same reason): ``front`` (window, FFTs, model 1,
    masked spectrum), ``to_model_2`` (inverse FFT into model 2's input),
    model 2's ``invoke`` and ``finish`` (overlap-add, fault check).  The
    pipelined processor runs model 2 on another thread between them.

    Fault guard, per stage: an input hop whose energy is not finite or
    exceeds ``IN_ENERGY`` has its NaN/Inf samples zeroed (counted in
    ``nonfinite``, samples) and is clipped to ±``IN_PEAK``; when the
    LSTM states or the output hop are not finite, this stage's windows,
    overlap-add and states are cleared and the hop is silence (counted in
    ``resets``); an output hop louder than ``OUT_ENERGY`` is clipped to
    ±``OUT_PEAK``.  The normal path costs three (1, N) x (N,) products and
    three small ufuncs per stage (AEC: four and four) and allocates nothing;
    only the fault paths do (temporaries, Python ints).  The thread that
    calls the hop is the counters' only writer.
    """

    channels = 1
    delay = ALGORITHMIC_DELAY

    def __init__(self, pair: ModelPair, fft: str = "auto") -> None:
        self.pair = pair
        self.label = pair.name
        self.runtime = pair.runtime
        self.nonfinite = 0
        self.resets = 0
        m2: Any = pair.m2  # BoundModel binds its tensor views with setattr
        self._fft = RealFFT(m2.signal, fft)
        self.fft_backend = self._fft.backend
        self._mic = SlidingWindow(self._fft.window)
        self.input_hop = self._mic.views[2]
        self._ola = OverlapAdd(m2.out)
        if pair.kind == "aec":
            self._far_fft = RealFFT(None, fft)
            self._far = SlidingWindow(self._far_fft.window)
        self.parts = self._build_parts()
        self.process_hop = self._sequential(*self.parts)
        self.pair.reset()

    @staticmethod
    def _sequential(front, to_model_2, invoke2, finish):
        def process_hop(mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
            front(mic, far)
            to_model_2()
            invoke2()
            finish(out)
        return process_hop

    def _build_parts(self):
        m1: Any = self.pair.m1  # BoundModel binds its tensor views with setattr
        m2: Any = self.pair.m2
        fft = self._fft
        assert fft.inverse is not None
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
        ola_add = self._ola.add
        aec = self.pair.kind == "aec"
        check_in, check_out, hop = self._guard()
        check_mic = check_in(win_new)
        if aec:
            far_old, far_keep, far_new = self._far.views
            far_window, far_forward, far_spectrum = self._far_fft.window, self._far_fft.forward, self._far_fft.spectrum
            far_mag, far_block = m1.far, m2.far
            check_far = check_in(far_new)

        def front(mic: np.ndarray, far: Optional[np.ndarray]) -> None:
            """Window, FFTs, model 1 and the masked spectrum (model 2 untouched)."""
            copyto(win_old, win_keep)
            copyto(win_new, mic)
            check_mic()
            forward()
            absolute(spectrum, mag)
            if divide_by_mag:
                multiply(mag, n_bins, den)
                maximum(den, floor, out=den)  # positional out is deprecated for maximum
            if aec:
                copyto(far_old, far_keep)
                copyto(far_new, far)  # type: ignore[arg-type]  # AEC: far is given
                check_far()
                far_forward()
                absolute(far_spectrum, far_mag)
            invoke1()
            copyto(st1_in, st1_out)
            if divide_by_mag:
                divide(mask, den, gain_re)
            else:
                multiply(mask, scale, gain_re)
            multiply(spectrum, gain, masked)

        def to_model_2() -> None:
            """The masked block (and the far-end window) into model 2's inputs."""
            inverse()
            if aec:
                copyto(far_block, far_window)

        def finish(out: np.ndarray) -> None:
            """Model 2's states carried over, its block overlap-added into ``out``, checked."""
            copyto(st2_in, st2_out)
            ola_add(hop)
            check_out(hop)
            copyto(out, hop)

        return front, to_model_2, invoke2, finish

    def _guard(self):
        """The fault guard's checks (the normal path) and its rare paths; see the class docstring.

        A check is a (1, N) x (N,) product into a preallocated 1-element
        array, then a ufunc into a 1-element bool: that allocates nothing
        (np.add.reduce does; so can a 1-D dot into a 0-d array, and
        math.isfinite's float), and NaN or Inf in an operand makes the
        product non-finite.  The (1, N) views are made once, so the output
        is checked in ``hop``, a buffer of ours, before it is copied out.
        """
        less_equal, isfinite = np.less_equal, np.isfinite
        hop = np.zeros(SHIFT, np.float32)
        m1: Any = self.pair.m1
        m2: Any = self.pair.m2
        st1, st2 = m1.state_in, m2.state_in
        state_dot, hop_dot = st1.reshape(1, -1).dot, hop.reshape(1, -1).dot
        in_max, energy_max = np.full(1, IN_ENERGY, np.float32), np.full(1, OUT_ENERGY, np.float32)
        acc, flag, flag2 = np.zeros(1, np.float32), np.zeros(1, bool), np.zeros(1, bool)
        ok = np.zeros(SHIFT, bool)
        zeros = np.zeros(SHIFT, np.float32)
        lo, hi = np.full(SHIFT, -OUT_PEAK, np.float32), np.full(SHIFT, OUT_PEAK, np.float32)
        in_lo, in_hi = np.full(SHIFT, -IN_PEAK, np.float32), np.full(SHIFT, IN_PEAK, np.float32)

        def zap(x: np.ndarray) -> None:
            np.isfinite(x, ok)
            bad = SHIFT - int(np.count_nonzero(ok))
            if bad:
                np.logical_not(ok, ok)
                np.copyto(x, zeros, where=ok)
                self.nonfinite += bad
            np.clip(x, in_lo, in_hi, x)

        def settle(out: np.ndarray) -> None:
            if np.isfinite(st1).all() and np.isfinite(st2).all() and np.isfinite(out).all():
                np.clip(out, lo, hi, out)  # loud but sound: bound it
                return
            self.clear()
            out.fill(0.0)
            self.resets += 1

        def check_in(x: np.ndarray) -> Callable[[], None]:
            """The check of input buffer ``x`` (a window's newest hop)."""
            energy = x.reshape(1, -1).dot

            def check() -> None:
                energy(x, acc)
                less_equal(acc, in_max, flag)  # False for NaN too
                if not flag:
                    zap(x)
            return check

        def check_out(x: np.ndarray) -> None:
            state_dot(st2, acc)  # both states in one product (their shapes are equal)
            isfinite(acc, flag)
            hop_dot(x, acc)
            less_equal(acc, energy_max, flag2)
            if not (flag and flag2):
                settle(x)

        return check_in, check_out, hop

    def clear(self) -> None:
        """Forget all history: windows, overlap-add tail and LSTM states."""
        self._mic.clear()
        if self.pair.kind == "aec":
            self._far.clear()
        self._ola.clear()
        self.pair.reset()

    def reset(self) -> None:
        """Start a new stream: `clear` (the fault counters stand)."""
        self.clear()

    def close(self) -> None:
        """Nothing to release: the interpreters go with the object."""


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
        self.label = f"{first.label}+{second.label}"
        self.runtime = first.runtime if first.runtime == second.runtime else f"{first.runtime}+{second.runtime}"
        self.input_hop = first.input_hop
        self._mid = np.zeros(SHIFT, np.float32)
        self._first = first.process_hop
        self._second = second.process_hop

    @property
    def nonfinite(self) -> int:
        return sum(stage.nonfinite for stage in self.stages)

    @property
    def resets(self) -> int:
        return sum(stage.resets for stage in self.stages)

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
        self._first(mic, far, self._mid)
        self._second(self._mid, None, out)

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()

    def close(self) -> None:
        for stage in self.stages:
            stage.close()


def build(mode: str, model: Optional[str] = None, ns_model: Optional[str] = None,
          model_dir: Optional[Path] = None, runtime: str = "auto", threads: int = 1,
          fft: str = "auto", pipeline: Union[bool, str] = False,
          max_suppression: Optional[float] = None) -> HopProcessor:
    """Load the model pair(s) for ``mode`` and return its hop processor.

    ``model`` is the pair of the first stage (NS for ``ns``, AEC otherwise);
    ``ns_model`` the NS pair of ``aec+ns``.  ``pipeline`` runs the second
    half on a worker thread (one hop more delay, see `dtlnd.pipeline`);
    ``"auto"`` does so when a paced sequential block, timed here for about
    0.3 s, takes over half the budget;
    ``max_suppression`` (dB) mixes the time-aligned input back in so the
    output never falls more than that below it (`dtlnd.suppression`).
    """
    from .pipeline import PIPELINE_ABOVE, paced_share, pipelined
    from .suppression import SuppressionLimit

    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    first = model or DEFAULT_MODELS["ns" if mode == "ns" else "aec"]
    pair = ModelPair.load(first, model_dir, runtime, threads)
    proc: HopProcessor
    if mode == "ns":
        proc = NoiseSuppressor(pair, fft)
    else:
        proc = EchoCanceller(pair, fft)
        if mode == "aec+ns":
            ns_pair = ModelPair.load(ns_model or DEFAULT_MODELS["ns"], model_dir, runtime, threads)
            proc = Chain(proc, NoiseSuppressor(ns_pair, fft))
    if pipeline == "auto":
        share = paced_share(proc)
        pipeline = share > PIPELINE_ABOVE
        log.info("pipeline auto: a paced block takes %.0f%% of the 8 ms budget, %s %.0f%%: pipeline %s",
                 100 * share, "over" if pipeline else "within", 100 * PIPELINE_ABOVE,
                 "on" if pipeline else "off")
    if pipeline:
        proc = pipelined(proc)
    if max_suppression is not None:
        proc = SuppressionLimit(proc, max_suppression)
    return proc


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
                self._far[f:f + k] = far[pos:pos + k]  # type: ignore[index]  # checked above
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
