"""Device resolution and the dtype policy, without a GPU (torch's device queries are faked)."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from localimg.backends.device import (
    DeviceUnavailableError,
    ResolvedDevice,
    _malloc_trim,
    choose_dtype,
    is_device_failure,
    lost_device_error,
    release_memory,
    resolve_device,
    torch_device,
    torch_dtype,
    vae_dtype,
)
from localimg.errors import ModelUnavailableError

FAMILIES = ("flux", "sd15", "sdxl", "sd3")


@pytest.mark.parametrize(
    ("device_kind", "family", "capability", "expected"),
    [
        ("cuda", "flux", (9, 0), "bfloat16"),  # H100
        ("cuda", "sdxl", (8, 0), "bfloat16"),  # A100: the first with fast bfloat16
        ("cuda", "sd15", (8, 6), "bfloat16"),  # RTX 30xx
        ("cuda", "flux", (7, 5), "float16"),  # T4
        ("cuda", "sd3", (7, 0), "float16"),  # V100
        ("cuda", "sd15", None, "float16"),
        ("mps", "sd15", None, "float16"),
        ("mps", "sdxl", None, "float16"),
        ("mps", "flux", None, "bfloat16"),  # T5-XXL overflows in float16
        ("mps", "sd3", None, "bfloat16"),
        *[("cpu", family, None, "float32") for family in FAMILIES],
    ],
)
def test_default_dtype(device_kind, family, capability, expected):
    assert choose_dtype(device_kind, family, capability) == expected


@pytest.mark.parametrize(
    ("device_kind", "capability"), [("cuda", (9, 0)), ("cuda", (7, 5)), ("mps", None), ("cpu", None)]
)
@pytest.mark.parametrize("override", ["float32", "float16", "bfloat16"])
def test_models_toml_override_wins(device_kind, capability, override):
    assert choose_dtype(device_kind, "flux", capability, override) == override


@pytest.mark.parametrize(
    ("family", "dtype", "expected"),
    [
        ("sdxl", "float16", "float32"),  # SDXL's VAE overflows in float16
        ("sdxl", "bfloat16", "bfloat16"),
        ("sdxl", "float32", "float32"),
        ("sd15", "float16", "float16"),
        ("flux", "bfloat16", "bfloat16"),
        ("sd3", "float16", "float16"),
    ],
)
def test_vae_dtype(family, dtype, expected):
    assert vae_dtype(family, dtype) == expected


def test_torch_dtype_names():
    assert torch_dtype("bfloat16") is torch.bfloat16
    assert torch_dtype("float16") is torch.float16
    assert torch_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="float8"):
        torch_dtype("float8")


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"Fake GPU {index}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (8, 0) if index == 0 else (7, 5))


def test_cpu_is_always_there():
    device = resolve_device("cpu")
    assert device.kind == "cpu"
    assert torch_device(device) == torch.device("cpu")


def test_auto_falls_back_to_cpu(no_accelerator):
    assert resolve_device("auto").kind == "cpu"


def test_auto_prefers_cuda(two_gpus):
    device = resolve_device("auto")
    assert device == ResolvedDevice("cuda", "Fake GPU 0", index=0, capability=(8, 0))


def test_explicit_cuda_index(two_gpus):
    device = resolve_device("cuda:1")
    assert (device.kind, device.name, device.capability) == ("cuda", "Fake GPU 1", (7, 5))
    assert device.torch_name == "cuda:1"


def test_auto_prefers_mps_over_cpu(monkeypatch, no_accelerator):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").kind == "mps"


@pytest.mark.parametrize(
    ("requested", "fragment"),
    [
        ("cuda", "CUDA is not available"),
        ("cuda:0", "CUDA is not available"),
        ("mps", "MPS is not available"),
        ("tpu", "expected one of auto, cuda, cuda:N, mps, cpu"),
        ("cpu:1", "only cuda devices take an index"),
    ],
)
def test_unavailable_device_is_a_clear_error(no_accelerator, requested, fragment):
    with pytest.raises(DeviceUnavailableError, match=fragment) as info:
        resolve_device(requested)
    assert requested in str(info.value)
    assert isinstance(info.value, ModelUnavailableError)
    assert info.value.code == "device_unavailable"


def test_cuda_index_out_of_range(two_gpus):
    with pytest.raises(DeviceUnavailableError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def test_release_memory_trims_the_host_heap_where_glibc_can():
    release_memory(resolve_device("cpu"))
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert (_malloc_trim() is not None) == glibc


CUDA_ERROR = getattr(torch, "AcceleratorError", RuntimeError)


@pytest.mark.parametrize(
    ("exc", "lost"),
    [
        (
            CUDA_ERROR("CUDA error: an illegal memory access was encountered\nSearch for `cudaErrorIllegalAddress'"),
            True,
        ),
        (
            RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously ..."),
            True,
        ),
        (RuntimeError("CUDA error: unspecified launch failure"), True),
        (RuntimeError("CUDA error: uncorrectable ECC error encountered"), True),
        (RuntimeError("CUDA error: unknown error"), True),  # a GPU that fell off the bus
        (RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"), True),  # torch.compile's
        # Not sticky: the next call can succeed, so the device is not given up on.
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (RuntimeError("CUDA error: out of memory"), False),
        (RuntimeError("CUDA error: invalid argument"), False),
        (RuntimeError("Expected all tensors to be on the same device"), False),
        (ValueError("CUDA error: an illegal memory access was encountered"), False),  # not torch's
        (RuntimeError("an illegal memory access was encountered"), False),  # not reported as a CUDA error
    ],
)
def test_only_sticky_cuda_errors_count_as_a_failed_device(exc: BaseException, lost: bool):
    assert is_device_failure(exc) is lost


def test_a_librarys_own_report_of_a_failed_kernel_is_checked_with_a_synchronize(monkeypatch: pytest.MonkeyPatch):
    """cuBLAS says CUBLAS_STATUS_EXECUTION_FAILED and leaves the sticky error to the next CUDA call: the
    synchronize is that call. A device that synchronizes fine is not lost, and a CPU is never probed."""
    gpu = ResolvedDevice("cuda", "Fake GPU 0", index=0)
    cublas = RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, ...)`")
    sticky = CUDA_ERROR("CUDA error: an illegal memory access was encountered")
    synchronized: list[str] = []

    def synchronize_failing(device: str) -> None:
        synchronized.append(device)
        raise sticky

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize_failing)
    assert lost_device_error(gpu, cublas) is sticky
    assert synchronized == ["cuda:0"]
    assert lost_device_error(gpu, sticky) is sticky  # says so itself: no probe needed
    assert synchronized == ["cuda:0"]
    assert lost_device_error(ResolvedDevice("cpu", "CPU"), cublas) is None
    assert synchronized == ["cuda:0"]
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: None)
    assert lost_device_error(gpu, cublas) is None
