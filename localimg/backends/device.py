"""Device detection, the dtype policy and what a device's errors mean: which device a model runs on, in which
precision, and whether a failed call ran out of memory (a smaller one can succeed) or lost the device for good.

The policy functions (`choose_dtype`, `vae_dtype`) and `is_device_failure` are pure so they can be tested without
a GPU; the others touch torch.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from localimg.backends.base import DeviceInfo
from localimg.errors import DeviceFailedError, ModelUnavailableError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cuda", "cuda:N", "mps", "cpu")
_REQUEST = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")

# MPS: SD1.5/SDXL are well tested in float16 on Apple silicon. FLUX and SD3 carry a T5-XXL text encoder that was
# trained in bfloat16 and overflows in float16 (black or NaN images), so they get bfloat16, which MPS supports
# from macOS 14; set `dtype = { mps = "float32" }` in models.toml on older systems.
_MPS_DTYPE: Mapping[str, str] = {"sd15": "float16", "sdxl": "float16", "flux": "bfloat16", "sd3": "bfloat16"}


# The CUDA runtime's messages for the errors that leave a process's CUDA context unusable: every later call on it
# fails too, until the process exits (CUDA runtime API, "cudaError"). torch reports them as "CUDA error: <message>",
# kernels compiled by Triton (torch.compile) as "Triton Error [CUDA]: <message>".
_STICKY_CUDA_ERRORS = (
    "an illegal memory access was encountered",  # cudaErrorIllegalAddress
    "unspecified launch failure",  # cudaErrorLaunchFailure
    "device-side assert triggered",  # cudaErrorAssert
    "an illegal instruction was encountered",  # cudaErrorIllegalInstruction
    "misaligned address",  # cudaErrorMisalignedAddress
    "hardware stack error",  # cudaErrorHardwareStackError
    "invalid program counter",  # cudaErrorInvalidPc
    "operation not supported on global/shared address space",  # cudaErrorInvalidAddressSpace
    "the launch timed out and was terminated",  # cudaErrorLaunchTimeout
    "uncorrectable ECC error encountered",  # cudaErrorECCUncorrectable
    "unknown error",  # cudaErrorUnknown: what a GPU that fell off the bus (Xid 79) gives
)
_CUDA_ERROR_PREFIXES = ("CUDA error: ", "Triton Error [CUDA]: ")


def is_device_failure(exc: BaseException) -> bool:
    """Whether `exc` reports a CUDA error after which the device cannot be used by this process any more."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        prefix + message in text for prefix in _CUDA_ERROR_PREFIXES for message in _STICKY_CUDA_ERRORS
    )


def lost_device_error(device: DeviceInfo, exc: BaseException) -> BaseException | None:
    """The sticky CUDA error behind `exc` when the device is lost, else None: `exc` itself when it says so;
    otherwise, for a CUDA device, what a synchronize raises, since a library may report a failed kernel in its
    own words first (cuBLAS's CUBLAS_STATUS_EXECUTION_FAILED) and leave the sticky error to the next call."""
    if is_device_failure(exc):
        return exc
    if device.kind != "cuda" or not isinstance(exc, RuntimeError):
        return None
    import torch

    try:
        torch.cuda.synchronize(str(torch_device(device)))
    except RuntimeError as probe:
        return probe if is_device_failure(probe) else None
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the device's memory ran out (not sticky: a smaller call can succeed)."""
    import torch

    # CUDA raises a dedicated type; MPS raises a plain RuntimeError with this wording.
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def raise_unless_out_of_memory(device: DeviceInfo, exc: Exception) -> None:
    """For a failed call on `device`: return when `exc` says its memory ran out (the caller handles that, out of
    its except block so that the traceback frees the call's tensors); otherwise raise what `exc` means, a
    DeviceFailedError when the device is lost, else `exc` itself."""
    failure = device_failure(device, exc)
    if failure is not None:
        raise failure from exc
    if not is_out_of_memory(exc):
        raise exc


def device_failure(device: DeviceInfo, exc: BaseException) -> DeviceFailedError | None:
    """The error to raise (chained to `exc`) when `exc` shows that `device` is lost to this process, else None."""
    lost = lost_device_error(device, exc)
    if lost is None:
        return None
    cause = str(lost).strip().splitlines()[0]
    return DeviceFailedError(
        f"The server's device ({device.name}) failed ({cause}) and cannot generate until the server is restarted. "
        "Please retry."
    )


class DeviceUnavailableError(ModelUnavailableError):
    """The requested device does not exist on this machine (or this torch build)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="device_unavailable")


@dataclass(frozen=True)
class ResolvedDevice(DeviceInfo):
    """A `DeviceInfo` that also remembers the CUDA ordinal (`cuda:1`) and compute capability."""

    index: int | None = None
    capability: tuple[int, int] | None = None

    @property
    def torch_name(self) -> str:
        """The device string torch understands: "cuda:1", "mps", "cpu"."""
        return f"{self.kind}:{self.index}" if self.index is not None else self.kind


def parse_device(requested: str) -> tuple[str, int | None]:
    """The kind ("auto", "cuda", "mps", "cpu") and CUDA index a device setting names, checked for form only (no
    torch: settings are checked before anything heavy is imported). Raises DeviceUnavailableError."""
    match = _REQUEST.match(requested.strip().lower())
    if match is None:
        raise DeviceUnavailableError(f"unknown device {requested!r}; expected one of {', '.join(DEVICE_CHOICES)}")
    kind, index_text = match[1], match[2]
    if index_text is not None and kind != "cuda":
        raise DeviceUnavailableError(f"device {requested!r}: only cuda devices take an index (cuda:N)")
    return kind, None if index_text is None else int(index_text)


def resolve_device(requested: str) -> ResolvedDevice:
    """`"auto"` picks cuda, then mps, then cpu; an explicit device that is not available raises."""
    import torch

    kind, index = parse_device(requested)
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"

    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise DeviceUnavailableError(f"device {requested!r} requested but CUDA is not available ({build})")
        if index is None:
            index = torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceUnavailableError(f"device {requested!r} requested but only {count} CUDA device(s) exist")
        major, minor = torch.cuda.get_device_capability(index)
        return ResolvedDevice("cuda", torch.cuda.get_device_name(index), index=index, capability=(major, minor))
    if kind == "mps":
        if not torch.backends.mps.is_available():
            why = "needs macOS 12.3+ on Apple silicon" if torch.backends.mps.is_built() else "torch built without MPS"
            raise DeviceUnavailableError(f"device {requested!r} requested but MPS is not available ({why})")
        return ResolvedDevice("mps", f"Apple MPS ({platform.machine()})")
    return ResolvedDevice("cpu", f"CPU ({platform.machine() or 'unknown'})")


def cuda_capability(device: DeviceInfo) -> tuple[int, int] | None:
    """The compute capability of a CUDA device (None elsewhere)."""
    if device.kind != "cuda":
        return None
    if isinstance(device, ResolvedDevice) and device.capability is not None:
        return device.capability
    import torch

    major, minor = torch.cuda.get_device_capability(torch_device(device))
    return major, minor


def device_memory_bytes(device: DeviceInfo) -> int | None:
    """Total memory of a CUDA device (None elsewhere: CPU and MPS share system memory)."""
    if device.kind != "cuda":
        return None
    import torch

    return int(torch.cuda.get_device_properties(torch_device(device)).total_memory)


def torch_device(device: DeviceInfo) -> torch.device:
    """The torch device to move a pipeline to (a plain `DeviceInfo` means the current CUDA device)."""
    import torch

    return torch.device(device.torch_name if isinstance(device, ResolvedDevice) else device.kind)


def choose_dtype(
    device_kind: str, family: str, cuda_capability: tuple[int, int] | None, override: str | None = None
) -> str:
    """The precision a model runs in, as a name in `registry.DTYPES`.

    A models.toml override (`ModelSpec.dtype[device_kind]`) wins. Otherwise: CUDA sm80+ (Ampere and later)
    bfloat16, older CUDA float16 (no fast bfloat16 there), MPS per family (see `_MPS_DTYPE`), CPU float32
    (half precision on CPU is slow and some kernels are missing).
    """
    if override is not None:
        return override
    if device_kind == "cuda":
        return "bfloat16" if cuda_capability is not None and cuda_capability >= (8, 0) else "float16"
    if device_kind == "mps":
        return _MPS_DTYPE.get(family, "float16")
    return "float32"


def vae_dtype(family: str, dtype: str) -> str:
    """The precision the VAE must decode in.

    SDXL's VAE overflows in float16 (NaNs, black images) on every device, so it decodes in float32. The SDXL
    pipeline does that itself when `vae.config.force_upcast` is set (cast up for the decode, back afterwards);
    a VAE kept in float32 for good breaks it instead (dtype mismatch on CUDA, and on MPS the pipeline casts it back
    to float16), so the backend enforces this through `force_upcast`. The other VAEs are fine in half precision.
    """
    return "float32" if family == "sdxl" and dtype == "float16" else dtype


def torch_dtype(name: str) -> torch.dtype:
    """`"bfloat16"` -> `torch.bfloat16`."""
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(dtypes)}")
    return dtypes[name]


def release_memory(device: DeviceInfo) -> None:
    """Give memory freed by dropped tensors back: the device allocator's cache, and on Linux the host heap.

    glibc keeps freed blocks below its (growing) mmap threshold in the process heap, so after a CPU model is
    unloaded the process still holds gigabytes it no longer uses (measured: 9.9 GB after unloading full-size
    SDXL on a CPU, 0.5 GB after `malloc_trim`). The host copy of a pipeline just moved to a GPU goes the same way.
    """
    import torch

    gc.collect()
    if device.kind == "cuda":
        torch.cuda.empty_cache()
    elif device.kind == "mps":
        torch.mps.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # musl and other libcs: nothing to trim
        return None
