"""`scripts/bench.py --tiny` runs end to end on the CPU and its JSON has every field for every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import bench  # noqa: E402


def test_bench_tiny_writes_every_field(tmp_path: Path, tiny_models_toml: Path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "bench.py"), "--tiny", "--models", "tiny-flux",
        "--repeats", "1", "--warmup", "0", "--clients", "2", "--requests", "2", "--ablate", "--profile", "--steps", "1",
        "--work-dir", str(tmp_path / "work"), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=480, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "TINY SMOKE RUN" in done.stdout
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["device_kind"] == "cpu" and report["complete"] is True
    assert report["versions"]["torch"] and report["versions"]["diffusers"]
    assert [(row["model"], row["size"], row["steps"]) for row in report["rows"]] == [("tiny-flux", "128x128", 1)]
    for row in report["rows"]:
        assert set(row) == set(bench.ROW_FIELDS), row["model"]
        for key in ("plain_s", "engine_s", "http_s", "ratio_engine", "ratio_http", "steps_per_s", "load_s",
                    "cold_start_s", "ready_s"):  # fmt: skip
            assert isinstance(row[key], float) and row[key] > 0, key
        # Not measurable on a CPU with tiny models: no FLOP model, no GPU memory, no peak, no GPU kernels.
        for key in ("flops_per_image", "mfu_plain", "mfu_engine", "mfu_http", "peak_mem_plain_gb",
                    "peak_mem_engine_gb", "profile"):  # fmt: skip
            assert row[key] is None, key
        assert row["cold_start_s"] > row["ready_s"]
        phases = ("read", "to_device", "optimize", "warm_up")
        assert list(row["load_phases"]) == list(phases) and all(v >= 0 for v in row["load_phases"].values())
        cold = row["cold_start_phases"]
        assert set(cold) == {*phases, "total", "other"} and cold["other"] > 0
        assert sum(cold[p] for p in phases) == pytest.approx(cold["total"], abs=0.05)
        assert set(row["concurrency"]) == set(bench.CONCURRENCY_FIELDS)
        assert row["concurrency"]["images_per_s"] > 0
        assert row["concurrency"]["p99_s"] >= row["concurrency"]["p50_s"] > 0
        assert len(row["samples"]["plain"]) == len(row["samples"]["engine"]) == len(row["samples"]["http"]) == 1
        # The same seed through plain diffusers and the engine: on a CPU nothing lossy or fused is applied, so
        # the images match but for float rounding.
        assert set(row["lossless"]) == set(bench.DIFFERENCE_FIELDS) and row["lossless"]["seed"] == bench.LOSSLESS_SEED
        assert row["lossless"]["mean_abs"] <= 0.5 and row["lossless"]["max_abs"] <= 8, row["lossless"]
        variants = [a["variant"] for a in row["ablations"]]
        expected = [v for v in bench.VARIANTS if v != "-cuda_graphs" or row["family"] in ("sd15", "sdxl")]
        assert variants == expected
        for ablation in row["ablations"]:
            assert ablation["engine_s"] > 0 and ablation["ratio"] > 0
            assert set(ablation["difference"]) == set(bench.DIFFERENCE_FIELDS)
    assert report["skipped"] == [] and report["failed"] == [] and report["deadline_s"] is None
    assert all(row["errors"] == {} for row in report["rows"])


def test_load_phases_are_read_from_the_metrics_page():
    page = "\n".join([
        "# TYPE localimg_model_load_seconds gauge",
        'localimg_model_load_seconds{model="a",phase="total"} 12.5',
        'localimg_model_load_seconds{model="a",phase="read"} 8.25',
        'localimg_model_load_seconds{model="b",phase="total"} 3.0',
    ])  # fmt: skip
    assert bench.load_phases(page, "a") == {"total": 12.5, "read": 8.25}


def test_the_server_process_keeps_the_callers_import_path(monkeypatch: pytest.MonkeyPatch):
    # On the GPU host the carried wheels (diffusers, fastapi, ...) are importable through PYTHONPATH alone.
    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    assert bench.import_path(Path("/repo")) == os.pathsep.join(["/repo", "/tmp/site"])
    monkeypatch.delenv("PYTHONPATH")
    assert bench.import_path(Path("/repo")) == "/repo"


def test_a_save_that_would_not_fit_on_the_disk_fails_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import shutil
    from types import SimpleNamespace

    import torch

    pipe = SimpleNamespace(components={"unet": torch.nn.Linear(1000, 1000), "tokenizer": object()})  # 4 MB
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(bench.shutil, "disk_usage", lambda path: usage._replace(free=int(0.9e9)))
    with pytest.raises(RuntimeError, match=r"0\.9 GB free, 1\.0 GB needed"):
        bench.check_disk_space(pipe, tmp_path)
    monkeypatch.setattr(bench.shutil, "disk_usage", lambda path: usage._replace(free=int(2e9)))
    bench.check_disk_space(pipe, tmp_path)


def test_percentile():
    assert bench.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert bench.percentile([1.0, 2.0], 99) == 1.99
    assert bench.percentile([5.0], 99) == 5.0


def test_a_run_cut_short_leaves_its_measured_stages_in_out(
    tmp_path: Path, tiny_models_toml: Path, monkeypatch: pytest.MonkeyPatch
):
    def time_limit(*args: object) -> dict:
        raise SystemExit(143)  # what the script's SIGTERM handler raises when a device call's time is up

    monkeypatch.setattr(bench, "run_http", time_limit)
    monkeypatch.setenv("LOCALIMG_TINY_DIR", str(tiny_models_toml.parent))
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--repeats", "1", "--warmup", "0", "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    with pytest.raises(SystemExit):
        bench.main(argv)
    report = json.loads(out.read_text())
    assert report["complete"] is False
    (row,) = report["rows"]
    assert set(row) == set(bench.ROW_FIELDS)
    assert row["plain_s"] > 0 and row["engine_s"] > 0 and len(row["samples"]["engine"]) == 1
    assert row["http_s"] is None and row["concurrency"] is None and row["samples"]["http"] is None


def test_a_failed_stage_or_model_is_reported_and_the_run_goes_on(
    tmp_path: Path, tiny_models_toml: Path, monkeypatch: pytest.MonkeyPatch
):
    plain, engine = bench.run_plain, bench.run_engine

    def plain_failing_for_flux(case: bench.Case, *args: object) -> object:
        if case.name == "tiny-flux":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return plain(case, *args)

    def engine_failing_for_fp8_and_sdxl(case: bench.Case, spec: Any, *args: object, **kwargs: Any) -> object:
        if spec.optimize.fp8:
            raise ValueError("Unsupported: graph break under fullgraph")
        if case.name == "tiny-sdxl":
            raise RuntimeError("compile failed")
        return engine(case, spec, *args, **kwargs)

    def http_failing(*args: object) -> dict:
        raise RuntimeError("server exited with 1")

    monkeypatch.setattr(bench, "run_plain", plain_failing_for_flux)
    monkeypatch.setattr(bench, "run_engine", engine_failing_for_fp8_and_sdxl)
    monkeypatch.setattr(bench, "run_http", http_failing)
    monkeypatch.setenv("LOCALIMG_TINY_DIR", str(tiny_models_toml.parent))
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--models", "tiny-flux,tiny-sd15,tiny-sdxl", "--variants", "+fp8,-prompt_cache", "--repeats",
            "1", "--warmup", "0", "--work-dir", str(tmp_path / "w"), "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["complete"] is True
    assert report["failed"] == [{"model": "tiny-flux", "error": "RuntimeError: CUDA error: an illegal memory "
                                 "access was encountered"}]  # fmt: skip
    row, sdxl = report["rows"]
    # An engine that fails keeps the plain baseline, and nothing after it runs.
    assert sdxl["plain_s"] > 0 and sdxl["engine_s"] is None and sdxl["ablations"] == []
    assert sdxl["errors"] == {"engine": "RuntimeError: compile failed"}
    assert row["model"] == "tiny-sd15" and row["engine_s"] > 0 and row["http_s"] is None
    assert row["errors"] == {"http": "RuntimeError: server exited with 1",
                             "+fp8": "ValueError: Unsupported: graph break under fullgraph"}  # fmt: skip
    assert [a["variant"] for a in row["ablations"]] == ["-prompt_cache"]


def test_a_deadline_starts_no_stage_past_it_and_names_what_it_skipped(
    tmp_path: Path, tiny_models_toml: Path, monkeypatch: pytest.MonkeyPatch
):
    plain = bench.run_plain

    def slow_plain(*args: object) -> object:
        time.sleep(0.5)  # the deadline passes during the first model's first stage
        return plain(*args)

    monkeypatch.setattr(bench, "run_plain", slow_plain)
    monkeypatch.setenv("LOCALIMG_TINY_DIR", str(tiny_models_toml.parent))
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--models", "tiny-flux,tiny-sd15", "--variants", "+fp8,-prompt_cache", "--deadline-s", "0.3",
            "--repeats", "1", "--warmup", "0", "--work-dir", str(tmp_path / "w"), "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["complete"] is True and report["deadline_s"] == 0.3
    assert report["skipped"] == ["tiny-flux:http", "tiny-flux:+fp8", "tiny-flux:-prompt_cache", "tiny-sd15"]
    (row,) = report["rows"]  # a stage started before the deadline ends, and is reported
    assert row["plain_s"] > 0 and row["engine_s"] > 0 and row["http_s"] is None and row["ablations"] == []


def test_variants_pick_ablations_and_unknown_ones_are_refused(capsys: pytest.CaptureFixture[str]):
    assert bench.parse_args(["--tiny"]).variants == []
    assert bench.parse_args(["--tiny", "--ablate"]).variants == list(bench.VARIANTS)
    assert bench.parse_args(["--tiny", "--variants", "+fp8, fast"]).variants == ["+fp8", "fast"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--variants", "+fp9"])
    assert "unknown variant(s) +fp9" in capsys.readouterr().err
