"""Where one GPU call's time goes, by kernel: `scripts/bench.py --profile`, to find what separates a measured
image from the FLOP floor (matrix products, attention, fused elementwise work, or the GPU waiting for the host)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# First match wins, on the lowercased kernel name. Inductor's kernels go first: they are named after the ops they
# fuse (a RoPE fused into attention's inputs is `triton_poi_fused__scaled_dot_product_cudnn_attention_0`), and are
# elementwise or reduction work (without max-autotune inductor leaves matrix products to cuBLAS). Attention and
# convolution go before GEMM: FlashAttention-3 is a CUTLASS kernel and cuDNN convolutions are implicit GEMMs.
KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("triton", ("triton_",)),
    ("attention", ("fmha", "flash", "sdpa", "attention", "attn")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma")),
    ("memory", ("memcpy", "memset")),
)
_DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, patterns in KERNEL_KINDS:
        if any(pattern in lowered for pattern in patterns):
            return kind
    return "other"  # eager elementwise, reductions and norms, or anything not named above


def summarize_kernels(trace_events: Iterable[dict[str, Any]], top: int = 15) -> dict[str, Any]:
    """Milliseconds on the GPU from a Chrome trace (torch.profiler's export): `kernel_ms` summed over kernels and
    copies; `busy_ms`, the time at least one ran (streams overlap); `span_ms`, first start to last end, so
    `span_ms - busy_ms` is the GPU idle in between; per kind, and the `top` kernels by time."""
    spans: list[tuple[float, float]] = []
    by_name: dict[str, list[float]] = {}
    for event in trace_events:
        if event.get("ph") != "X" or event.get("cat") not in _DEVICE_CATEGORIES:
            continue
        start, duration = float(event["ts"]), float(event["dur"])
        spans.append((start, start + duration))
        totals = by_name.setdefault(event["name"], [0.0, 0])
        totals[0] += duration / 1e3
        totals[1] += 1
    by_kind = {kind: 0.0 for kind, _ in KERNEL_KINDS} | {"other": 0.0}
    for name, (ms, _) in by_name.items():
        by_kind[kernel_kind(name)] += ms
    ranked = sorted(by_name.items(), key=lambda item: item[1][0], reverse=True)[:top]
    return {
        "kernel_ms": sum(ms for ms, _ in by_name.values()),
        "busy_ms": _union_length(spans) / 1e3,
        "span_ms": (max(end for _, end in spans) - min(start for start, _ in spans)) / 1e3 if spans else 0.0,
        "by_kind_ms": by_kind,
        "top": [
            {"kernel": name[:200], "kind": kernel_kind(name), "ms": ms, "calls": int(calls)}
            for name, (ms, calls) in ranked
        ],
    }


def _union_length(spans: list[tuple[float, float]]) -> float:
    covered, reached = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reached:
            covered += end - max(start, reached)
            reached = end
    return covered


def profile_kernels(call: Callable[[], object], top: int = 15) -> dict[str, Any]:
    """Run `call` once under torch's profiler (CUDA activity, which records the kernels every thread launches:
    the engine runs on its worker) and summarize its kernels; `wall_ms` is the call's own time, profiler
    overhead included."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        started = time.perf_counter()
        call()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - started) * 1e3
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return {"wall_ms": wall_ms, **summarize_kernels(events, top)}
