"""The MLX backend a worker runs on, and every default that depends on it, decided here.

Hearth runs on three MLX backends: ``cpu`` (Linux, the ``mlx-cpu`` wheel), ``cuda`` (Linux,
``mlx-cuda-12`` or ``mlx-cuda-13``) and ``metal`` (macOS on Apple Silicon, ``mlx-metal``). What
differs between them is decided by the pure functions below, from the backend's name alone:

- ``preload_openblas``: only on ``cpu``. The CPU wheel bundles a slow reference BLAS, and
  Debian's OpenBLAS (LD_PRELOAD at spawn, see ``shared.blas``) is ~30x faster; a GPU backend
  does its matrix work on the device.
- ``cpu_attention``: only on ``cpu``. MLX's CPU ``exp`` is scalar, so ``worker.cpu_attention``
  computes every float32 softmax with NumPy; a GPU keeps MLX's fused attention kernel.
- ``cpu_swiglu``: only on ``cpu``, for the same reason: ``worker.cpu_swiglu`` computes the MLP's
  SiLU gate with NumPy's ``exp`` (a decode step of 8 SmolLM2 rows: 88 -> 80.5 ms).
- ``fused_projections``: only on GPU backends. ``worker.fused_projections`` runs a layer's q/k/v
  and gate/up projections as one matmul each: on the H200 a SmolLM2-135M bf16 decode step took
  1.09x / 1.17x / 1.14x / 1.02x less time at 1 / 8 / 32 / 64 sequences, with identical logits. On
  the CPU the step is bound by reading the float32 weights, which stacking doesn't change
  (measured within noise, 0.89-1.0x at 8 sequences), and the wider prefill matmul rounds
  differently in OpenBLAS (logits moved by 1e-4), so the CPU keeps mlx-lm's projections.
- ``import_dtype``: what ``dtype = "auto"`` imports a GGUF file to: ``float32`` on ``cpu``
  (MLX's quantized CPU kernels are slow; float32 prefills ~25x faster), the GGUF's own
  quantized weights (``keep``) on GPU backends, where they move fewer bytes a token.
- ``warmup_batches``: the batch sizes the load-time warm-up runs (``worker.warmup``). A GPU
  backend compiles kernels on first use of each shape (12 s for a fresh process on the H200), so
  every size up to ``max_batch`` runs once at load. On ``cpu`` a second pass is as slow as the
  first (measured: SmolLM2-135M float32, a batch of 8 in 0.55 s then 0.51 s; of 1 in 0.31 s then
  0.45 s), so nothing is compiled there, and a large batch costs real time (64 sequences of
  SmolLM2 in bfloat16: 63 s): one batch of two runs, which checks the batched prefill and decode
  path before the worker says ready, for ~0.3 s of load time.
- ``warmup_joins``: whether the warm-up also runs sequences joining and leaving a running batch
  and starting from prompt-cache hits (``worker.warmup._joins``): on GPU backends, where those
  paths compile kernels of their own (the first join on the H200 stalled every stream 3.5 s);
  not on ``cpu``, where nothing compiles and it would only add load time.

- ``default_speculation``: what a model without a ``speculative`` setting (and without a
  ``draft_model``) decodes with: prompt lookup on ``cpu``, where a step that verifies drafts
  costs little more than a plain one and the plan (``worker.speculation``) keeps prose from
  losing; ``off`` on GPU backends: SmolLM2 in bfloat16 (the GPU import) copies little of what
  the edit scenario asks for, so drafts cost it 7% (session 8). ``speculative = "lookup"`` turns
  it on there, and pays for models that copy (SmolLM2 float32 on the H200: edit x1 2.49x).
- ``worker_env``: MLX settings a worker starts with (a variable already set is left alone). On
  ``cuda``, ``MLX_CUDA_USE_CUDNN_SDPA=0``: MLX otherwise runs prefill attention through cuDNN,
  which builds (and compiles) a graph for every new prompt shape, and a server meets new shapes
  all the time. Measured on the H200 (docs/benchmarks.md): in-process BatchGenerator steps of
  SmolLM2-135M at 32 sequences went from 13.6-17.7 ms to 10.2-10.9 ms, and Hearth's aggregate at
  8/32/64 clients rose 5-28%. Prefill attention then runs as plain matmul + softmax, one
  ``prefill_step`` of queries at a time, so its scores stay bounded. And ``MLX_ENABLE_TF32=0``:
  MLX's CUDA backend otherwise runs float32 matmuls in TF32 (a 10-bit mantissa), and the kernel
  it picks depends on the GEMM's shape, so a float32 model's logits for a row changed with the
  batch around it: on the H200 a seeded request sampled other tokens in a batch of 16 than
  alone, and a step verifying drafts other logprobs than a plain one (session 10; with the
  variable set those tests pass there). A float32 model is one a user chose for its precision;
  bfloat16 and quantized models do not use TF32 at all.

Two callers need the backend without the same means: the worker asks MLX itself
(``worker.device.backend``), while the gateway never imports MLX (it must stay up while a worker
crashes or loads) and asks ``installed_backend`` here, which reads the installed distributions:
``mlx-cuda-*`` means ``cuda``, macOS on Apple Silicon (where ``mlx`` brings ``mlx-metal``) means
``metal``, anything else ``cpu``.
``HEARTH_BACKEND=cpu|cuda|metal`` overrides that guess (e.g. a CUDA wheel on a machine whose
workers run elsewhere). The worker's answer is the one that counts; the gateway's only feeds its
memory estimate and the environment a worker is spawned with.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import MutableMapping

BACKENDS = ("cpu", "cuda", "metal")
_CUDA_DISTRIBUTIONS = ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda")
_CPU_WARMUP_BATCH = 2  # nothing compiles on the CPU: one small batched pass checks the path


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def installed_backend() -> str:
    """The backend this machine's workers will run on, without importing MLX."""
    forced = os.environ.get("HEARTH_BACKEND", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"HEARTH_BACKEND must be one of {', '.join(BACKENDS)}, got {forced!r}")
        return forced
    if platform.system() == "Darwin":  # MLX's macOS wheels are Metal builds for Apple Silicon
        return "metal" if platform.machine() == "arm64" else "cpu"
    if any(_installed(d) for d in _CUDA_DISTRIBUTIONS):
        return "cuda"
    return "cpu"


def _check(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown MLX backend {backend!r} (one of {', '.join(BACKENDS)})")


def preload_openblas(backend: str) -> bool:
    """Whether workers get Debian's OpenBLAS preloaded (only the CPU backend does BLAS on the CPU)."""
    _check(backend)
    return backend == "cpu"


def cpu_attention(backend: str) -> bool:
    """Whether ``worker.cpu_attention`` replaces mlx-lm's attention (only on the CPU backend)."""
    _check(backend)
    return backend == "cpu"


def cpu_swiglu(backend: str) -> bool:
    """Whether ``worker.cpu_swiglu`` replaces mlx-lm's SwiGLU (only on the CPU backend)."""
    _check(backend)
    return backend == "cpu"


def fused_projections(backend: str) -> bool:
    """Whether a loaded model's projections are stacked (``worker.fused_projections``): GPU backends."""
    _check(backend)
    return backend != "cpu"


def import_dtype(dtype: str, backend: str) -> str:
    """The dtype a GGUF file is imported to for the configured ``dtype``: ``auto`` is float32 on
    the CPU and ``keep`` (the file's quantized weights) on GPU backends; anything else as given."""
    _check(backend)
    if dtype != "auto":
        return dtype
    return "float32" if backend == "cpu" else "keep"


def warmup_batches(backend: str, max_batch: int) -> list[int]:
    """The batch sizes the load-time warm-up runs, largest first: every size up to ``max_batch``
    on a GPU backend (each new shape compiles kernels once), one batch of two on the CPU."""
    _check(backend)
    if max_batch < 1:
        return []
    if backend == "cpu":
        return [min(max_batch, _CPU_WARMUP_BATCH)]
    return list(range(max_batch, 0, -1))


def warmup_joins(backend: str) -> bool:
    """Whether the load-time warm-up runs the join/leave/prompt-cache paths (GPU backends)."""
    _check(backend)
    return backend != "cpu"


def default_speculation(backend: str) -> str:
    """The speculative decoding mode a model runs when its config names none (see above)."""
    _check(backend)
    return "lookup" if backend == "cpu" else "off"


# Steps an arrival may wait for others while the batch decodes (worker/admission.py), when the
# model sets no ``admission_hold``. GPU: a prefill pass costs its kernel launches more than its
# tokens, and a burst reaches a worker spread over ~100-200 ms (the gateway routes one request at
# a time), so holding makes one pass of many (H200, 32 clients: +7-9% aggregate, TTFT p50 -7-14%;
# Metal by the same reasoning, not measured). CPU: a pass costs its tokens; holding only delays.
_ADMISSION_HOLD = {"cpu": 0, "cuda": 8, "metal": 8}


def admission_hold(backend: str) -> int:
    """Steps an arrival may be held on ``backend`` when its model sets none (see above)."""
    _check(backend)
    return _ADMISSION_HOLD[backend]


def speculative_budget(backend: str, configured: int | None) -> int:
    """Forward positions a decode step may spend on drafts plus next tokens, shared by the
    batch (``worker.speculation.draft_cap``): what the model sets, else the backend's default.
    On the CPU each position costs compute (SmolLM2-135M float32: one sequence with 8 positions
    ~1.6x a plain step, 8 sequences with 8 each ~3x), so 32 lets one sequence draft 8 and 8
    sequences draft 3; a GPU has compute to spare at these sizes."""
    _check(backend)
    if configured is not None:
        return configured
    return 32 if backend == "cpu" else 128


# (wait, position, row_wait) for worker.speculation.StepCost, measured with
# benchmarks/step_costs.py (the forward pass) and benchmarks/speculation_loop.py (the whole step).
# CPU (SmolLM2-135M float32, 2 cores): a step of width W at B rows costs about
# 1 + 0.1·sqrt(B)·(W - 1) plain steps (B=1: 1.46x at W=5, B=8: 1.68x at W=5, 2.6x at W=9), and
# the host's check about 0.15 of a plain step more (W=2 at B=1: 1.3x). CUDA (H200, session 9,
# SmolLM2 float32, in-process): a step with drafts took 1.2-1.25x a plain one at one row and
# 1.14-1.3x at 8 rows, once 2.7x; the per-row wait is what keeps 8 prose streams from drafting
# where it doesn't pay. Chosen over (1.5, 0.01, 0.1), (0.2, 0.01, 0.02) and (0.2, 0.01, 0.15) by
# `hearth bench --scenario edit` over HTTP (docs/benchmarks.md). Metal: not measured; as CUDA.
_STEP_COST = {"cpu": (0.15, 0.1, 0.0), "cuda": (0.2, 0.01, 0.3), "metal": (0.2, 0.01, 0.3)}


# What a chained step with drafts costs, for a model that sets ``speculative_chain = true``
# (worker.decode: greedy rows, the device deciding what each accepted, the next step launched
# before the host lands this one): the wait is gone, what is left is the host's guessing and
# landing per row and the step's extra positions. Estimates, not fitted: chaining measured no
# faster than landing first on the H200 (docs/benchmarks.md, "Speculation on the H200 with
# SmolLM2 in float32, and chained steps"), so no backend chains by default.
_CHAINED_STEP_COST = {"cpu": (0.05, 0.1, 0.0), "cuda": (0.1, 0.02, 0.02), "metal": (0.1, 0.02, 0.02)}


def chained_speculation_cost(backend: str) -> tuple[float, float, float]:
    """``speculation_cost`` for chained steps (see ``_CHAINED_STEP_COST``)."""
    _check(backend)
    return _CHAINED_STEP_COST[backend]


def speculation_cost(backend: str) -> tuple[float, float, float]:
    """What verifying drafts costs on ``backend``: (the host wait, one extra position, the
    host wait per row), relative to a plain decode step (``worker.speculation.plan``)."""
    _check(backend)
    return _STEP_COST[backend]


def verify_width(backend: str, width: int) -> int:
    """The forward width a step with drafts runs at: on a GPU the next power of two (each new
    shape compiles kernels once; a few widths can be warmed at load), on the CPU as it is
    (nothing compiles there, and every padded position costs compute)."""
    _check(backend)
    if backend == "cpu" or width <= 1:
        return width
    return 1 << (width - 1).bit_length()


def verify_widths(backend: str, cap: int) -> list[int]:
    """The widths steps with up to ``cap`` drafts run at on ``backend`` (what the warm-up runs)."""
    return sorted({verify_width(backend, w) for w in range(2, cap + 2)})


_WORKER_ENV = {"cuda": {"MLX_CUDA_USE_CUDNN_SDPA": "0", "MLX_ENABLE_TF32": "0"}}


def worker_env(backend: str) -> dict[str, str]:
    """MLX environment settings for a worker on ``backend`` (see the module docstring)."""
    _check(backend)
    return dict(_WORKER_ENV.get(backend, {}))


def apply_worker_env(env: MutableMapping[str, str], backend: str) -> None:
    """Set ``worker_env(backend)`` in ``env`` where a variable is not set already: call it before
    MLX first touches the device (MLX reads these once)."""
    for key, value in worker_env(backend).items():
        env.setdefault(key, value)
