"""The hop-processor interface every engine and wrapper keeps, and the wrappers' common base.

`dtlnd.engine` makes the processors; the pipelined engine
(`dtlnd.pipeline`), the suppression limit (`dtlnd.suppression`) and the
reference alignment (`dtlnd.delayline`) wrap one and must look like one to
the audio path, the supervisor and the reports.  The real-time contract of
``process_hop`` is in `dtlnd.engine`'s docstring.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import numpy as np


class HopProcessor(Protocol):
    """What the audio path drives: one 128-sample hop at a time."""

    #: 1 (microphone) or 2 (microphone + far-end reference)
    channels: int
    #: samples from a hop's input to the output it belongs to
    delay: int
    #: the model pair(s), e.g. "dtln_aec_128_quant+dtln_ns_quant"
    label: str
    #: the TF-Lite runtime the pairs run on
    runtime: str
    #: the latest microphone hop as the engine saw it (non-finite samples zeroed)
    input_hop: np.ndarray

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...

    @property
    def nonfinite(self) -> int: ...

    @property
    def resets(self) -> int: ...


class Wrapper:
    """A hop processor around ``inner``: its identity, delay and fault counters are the inner one's.

    Subclasses set ``process_hop`` (and change ``delay`` when they add one).
    """

    def __init__(self, inner: HopProcessor) -> None:
        self.inner = inner
        self.channels = inner.channels
        self.delay = inner.delay
        self.label = inner.label
        self.runtime = inner.runtime
        self.input_hop = inner.input_hop
        #: the engines inside, first stage first
        self.stages: tuple[Any, ...] = getattr(inner, "stages", (inner,))

    @property
    def nonfinite(self) -> int:
        return self.inner.nonfinite

    @property
    def resets(self) -> int:
        return self.inner.resets

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        self.inner.close()

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
        raise NotImplementedError
