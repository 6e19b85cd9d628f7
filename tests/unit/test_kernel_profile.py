"""`bench.py --profile`'s summary of a torch.profiler Chrome trace: GPU time per kind of kernel, busy and idle."""

from __future__ import annotations

import pytest

from localimg.testing.kernel_profile import kernel_kind, summarize_kernels


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", "gemm"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "gemm"),
        ("void cutlass::device_kernel<f8f8bf16_rowwise_kernel>", "gemm"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1", "attention"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "attention"),
        ("void cutlass::device_kernel<flash::FlashAttnFwdSm90<CollectiveMainloopFwd>>", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "attention"),
        # Named after the ops it fuses, but elementwise work: a RoPE applied to attention's inputs.
        ("triton_poi_fused__scaled_dot_product_cudnn_attention_add_mul_0", "triton"),
        ("triton_red_fused_native_layer_norm_1", "triton"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16>", "other"),
        ("Memcpy HtoD (Pageable -> Device)", "memory"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", "other"),
    ],
)
def test_kernels_are_sorted_by_kind(name: str, kind: str):
    assert kernel_kind(name) == kind


def kernel(name: str, start: float, duration: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": start, "dur": duration, "pid": 0, "tid": 7}


def test_summary_counts_gpu_time_busy_time_and_idle_gaps():
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 9000.0},  # host time: not counted
        {"ph": "M", "name": "process_name", "args": {"name": "python"}},
        kernel("nvjet_gemm_a", 1000.0, 2000.0),
        kernel("nvjet_gemm_a", 3500.0, 2000.0),
        kernel("cudnn_generated_fort_native_sdpa_sm90", 4500.0, 1500.0),  # overlaps the GEMM on another stream
        kernel("triton_poi_fused_add_0", 7000.0, 500.0),
        kernel("Memset (Device)", 8000.0, 100.0, cat="gpu_memset"),
    ]
    summary = summarize_kernels(events, top=2)
    assert summary["kernel_ms"] == pytest.approx(6.1)
    assert summary["busy_ms"] == pytest.approx(2.0 + 2.5 + 0.5 + 0.1)  # the overlap counted once
    assert summary["span_ms"] == pytest.approx(7.1)  # 1000 µs to 8100 µs: 2.0 ms of it idle
    assert summary["by_kind_ms"] == pytest.approx(
        {"triton": 0.5, "attention": 1.5, "convolution": 0.0, "gemm": 4.0, "memory": 0.1, "other": 0.0}
    )
    assert summary["top"] == [
        {"kernel": "nvjet_gemm_a", "kind": "gemm", "ms": pytest.approx(4.0), "calls": 2},
        {"kernel": "cudnn_generated_fort_native_sdpa_sm90", "kind": "attention", "ms": pytest.approx(1.5), "calls": 1},
    ]


def test_a_trace_without_gpu_work_sums_to_zero():
    summary = summarize_kernels([{"ph": "X", "cat": "cpu_op", "name": "aten::add", "ts": 0.0, "dur": 5.0}])
    assert summary["kernel_ms"] == summary["busy_ms"] == summary["span_ms"] == 0.0 and summary["top"] == []
