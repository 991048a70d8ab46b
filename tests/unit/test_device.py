"""shared.device: the backend-dependent defaults (CPU vs GPU), decided from the backend's name."""

from __future__ import annotations

import importlib.metadata

import pytest

from shared import device
from shared.blas import openblas_path


def test_only_the_cpu_backend_preloads_openblas_and_swaps_attention() -> None:
    assert device.preload_openblas("cpu") and device.cpu_attention("cpu") and device.cpu_swiglu("cpu")
    for gpu in ("cuda", "metal"):
        assert not device.preload_openblas(gpu) and not device.cpu_attention(gpu) and not device.cpu_swiglu(gpu)


def test_only_gpu_backends_warm_the_join_paths() -> None:
    assert not device.warmup_joins("cpu")
    assert device.warmup_joins("cuda") and device.warmup_joins("metal")


def test_only_gpu_backends_stack_projections() -> None:
    assert not device.fused_projections("cpu")
    assert device.fused_projections("cuda") and device.fused_projections("metal")


def test_only_gpu_backends_hold_arrivals_unless_the_model_says() -> None:
    from shared.config import ModelConfig

    assert device.admission_hold("cpu") == 0
    assert device.admission_hold("cuda") > 0 and device.admission_hold("metal") > 0
    assert ModelConfig(name="m", path="p").admission("cuda") == device.admission_hold("cuda")
    assert ModelConfig(name="m", path="p", admission_hold=0).admission("cuda") == 0
    assert ModelConfig(name="m", path="p", admission_hold=3).admission("cpu") == 3


def test_steps_with_drafts_chain_only_when_the_model_says() -> None:
    from shared.config import ModelConfig

    assert ModelConfig(name="m", path="p").speculative_chain is False
    # without the wait for the host, a chained step costs less than one that lands first
    assert device.chained_speculation_cost("cuda")[0] < device.speculation_cost("cuda")[0]


def test_auto_imports_float32_on_the_cpu_and_keeps_quantized_weights_on_gpus() -> None:
    assert device.import_dtype("auto", "cpu") == "float32"
    assert device.import_dtype("auto", "cuda") == "keep"
    assert device.import_dtype("auto", "metal") == "keep"
    for backend in device.BACKENDS:  # an explicit dtype is never second-guessed
        assert device.import_dtype("bfloat16", backend) == "bfloat16"
        assert device.import_dtype("keep", backend) == "keep"


def test_gpus_warm_every_batch_size_and_the_cpu_one_small_batch() -> None:
    assert device.warmup_batches("cuda", 4) == [4, 3, 2, 1]
    assert device.warmup_batches("metal", 1) == [1]
    assert device.warmup_batches("cpu", 8) == [2]
    assert device.warmup_batches("cpu", 1) == [1]
    assert device.warmup_batches("cuda", 0) == []


def test_an_unknown_backend_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="tpu"):
        device.import_dtype("auto", "tpu")


def test_installed_backend_reads_the_wheels_without_importing_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEARTH_BACKEND", raising=False)
    monkeypatch.setattr("platform.system", lambda: "Linux")
    real = importlib.metadata.distribution

    def with_cuda(name: str) -> importlib.metadata.Distribution:
        if name == "mlx-cuda-13":
            return real("mlx")  # any distribution: only its presence counts
        return real(name)

    here = device.installed_backend()
    assert here == ("cuda" if any(device._installed(d) for d in device._CUDA_DISTRIBUTIONS) else "cpu")
    monkeypatch.setattr("importlib.metadata.distribution", with_cuda)
    assert device.installed_backend() == "cuda"
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    assert device.installed_backend() == "metal"


def test_hearth_backend_overrides_the_guess_and_turns_openblas_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_BACKEND", "cuda")
    assert device.installed_backend() == "cuda"
    assert openblas_path() is None  # a GPU backend: nothing is preloaded
    monkeypatch.setenv("HEARTH_BACKEND", "gpu")
    with pytest.raises(ValueError, match="HEARTH_BACKEND"):
        device.installed_backend()


def test_cuda_workers_start_with_cudnn_attention_and_tf32_off_unless_told_otherwise() -> None:
    assert device.worker_env("cuda") == {"MLX_CUDA_USE_CUDNN_SDPA": "0", "MLX_ENABLE_TF32": "0"}
    assert device.worker_env("cpu") == {} and device.worker_env("metal") == {}
    env = {"MLX_CUDA_USE_CUDNN_SDPA": "1"}
    device.apply_worker_env(env, "cuda")
    assert env == {"MLX_CUDA_USE_CUDNN_SDPA": "1", "MLX_ENABLE_TF32": "0"}  # the operator's choice stands
    fresh: dict[str, str] = {}
    device.apply_worker_env(fresh, "cuda")
    assert fresh == {"MLX_CUDA_USE_CUDNN_SDPA": "0", "MLX_ENABLE_TF32": "0"}
