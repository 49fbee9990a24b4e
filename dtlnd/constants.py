"""The facts every module shares: DTLN's framing, and the names users may write.

DTLN works at 16 kHz on 512-sample (32 ms) windows shifted by 128 samples
(8 ms); everything else here is a list of the values a setting or a flag
accepts, so that the config schema, the engine and the command line can
never disagree about them.
"""

from __future__ import annotations

#: The models' sample rate, Hz.
RATE = 16000
#: Samples per analysis window (32 ms).
BLOCK = 512
#: Samples per hop: the window shift, and the real-time block (8 ms).
SHIFT = 128
#: rfft bins of one window.
BINS = BLOCK // 2 + 1
#: The real-time budget of one block, ns and ms.
BUDGET_NS = SHIFT * 1_000_000_000 // RATE
BUDGET_MS = BUDGET_NS / 1e6

#: Processing modes: noise suppression, echo cancellation, both in that order.
MODES = ("ns", "aec", "aec+ns")
#: The pair each stage uses when none is named.
DEFAULT_MODELS = {"ns": "dtln_ns_quant", "aec": "dtln_aec_128_quant"}
#: Model runtimes in the order ``auto`` tries them (``auto`` first).
RUNTIMES = ("auto", "ai-edge-litert", "tflite-runtime", "tensorflow", "onnxruntime")
#: Forms a model pair's files come in (``NAME_1.tflite``...), in the order ``auto`` prefers.
MODEL_FORMATS = ("tflite", "onnx")
#: ALSA sample format names -> the numpy dtype the output stream uses.
FORMATS = {"S16_LE": "int16", "S32_LE": "int32", "FLOAT_LE": "float32"}
#: Log levels, least severe first.
LOG_LEVELS = ("debug", "info", "warning", "error")
#: FFT backends a user may force (``auto``: the fastest installed).
FFT_BACKENDS = ("auto", "pyfftw", "numpy")
#: The accepted range of ``max_suppression``, dB.
SUPPRESSION_RANGE_DB = (0.0, 120.0)
