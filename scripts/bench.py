"""Benchmark: plain diffusers next to localimg's engine and localimg end to end over HTTP, same device, same run.

GPU (full-size random-weight models, built on the GPU from the published configs, saved as diffusers folders and
registered in a temporary models.toml, so localimg loads them like a user's model):

    python scripts/bench.py --models flux-dev,sdxl --out bench.json

CPU smoke run with the tiny models (same code path, a few seconds; MFU and peak memory are null there):

    python scripts/bench.py --tiny --out bench-tiny.json

Per model, in order: (1) plain diffusers, the pipeline called the way its docs show, bf16 on CUDA (the in-memory
pipeline that was just built, or `from_pretrained` of the folder); (2) localimg's Engine + DiffusersBackend loaded
through models.toml with its optimizations (load time includes the warm-up of the benchmark size); (3)
`localimg serve` in a fresh process called with the openai SDK: cold start to the first image (the compile cache
on disk is warm from step 2), sequential latency, then a concurrency run. Stages free the device in between.
`--ablate` adds one engine run per optimization toggled (see VARIANTS; `--variants` picks some). Median of
`--repeats` after `--warmup`. Every engine run's image for seed LOSSLESS_SEED is compared with plain diffusers'.
`--deadline-s` bounds the whole run: no model, HTTP stage or variant starts after it (a model's plain and
engine stages run together), and the report names what it skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

STARTED = time.monotonic()  # run as a script, --deadline-s counts from here: before torch's import
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

PROMPT = "a lighthouse on a rocky island at dawn, oil painting, dramatic sky"
# The first timed seed: plain diffusers and every engine run make this image, and the row says how far apart.
LOSSLESS_SEED = 1000


@dataclass(frozen=True)
class Case:
    """One model as benchmarked: what it is, and the request every stage makes."""

    name: str
    family: str
    arch: str | None  # localimg.testing.flops architecture; None: no FLOP model (tiny)
    size: int
    steps: int
    guidance: float
    max_sequence_length: int | None
    cfg: bool  # the pipeline runs classifier-free guidance (two denoiser passes per step)


FULL_CASES = {
    "flux-dev": Case("flux-dev", "flux", "flux", 1024, 28, 3.5, 512, cfg=False),
    "flux-schnell": Case("flux-schnell", "flux", "flux", 1024, 4, 0.0, 256, cfg=False),
    "sdxl": Case("sdxl", "sdxl", "sdxl", 1024, 30, 5.0, None, cfg=True),
    "sd15": Case("sd15", "sd15", "sd15", 512, 25, 7.5, None, cfg=True),
    "sd35-medium": Case("sd35-medium", "sd3", "sd3.5-medium", 1024, 28, 4.5, 256, cfg=True),
    "sd35-large": Case("sd35-large", "sd3", "sd3.5-large", 1024, 28, 3.5, 256, cfg=True),
}
TINY_CASES = {
    "tiny-flux": Case("tiny-flux", "flux", None, 128, 2, 3.5, 64, cfg=False),
    "tiny-sd15": Case("tiny-sd15", "sd15", None, 128, 2, 7.5, None, cfg=True),
    "tiny-sdxl": Case("tiny-sdxl", "sdxl", None, 128, 2, 5.0, None, cfg=True),
    "tiny-sd3": Case("tiny-sd3", "sd3", None, 128, 2, 4.5, 64, cfg=True),
}
# --ablate: engine variants, each an override of the model's [optimize] table. "off" is localimg with nothing
# applied (its overhead over plain diffusers); "-X" is the default with X turned off; "fast" adds the lossy ones.
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"preset": "off"},
    "-attention": {"attention": "default"},
    "-compile": {"compile": False},
    "-compile_vae": {"compile_vae": False},
    "-fuse_qkv": {"fuse_qkv": False},
    "-channels_last": {"channels_last": False},
    "-sync_free": {"sync_free": False},
    "-prompt_cache": {"prompt_cache": 0},
    "-cuda_graphs": {"cuda_graphs": False},
    "+fp8": {"fp8": True},  # the lossless defaults plus fp8 GEMMs alone: the issue's fp8 target
    "fast": {"preset": "fast"},
}
ROW_FIELDS = (
    "model", "family", "size", "steps", "plain_s", "engine_s", "http_s", "ratio_engine", "ratio_http",
    "http_overhead", "steps_per_s", "flops_per_image", "mfu_plain", "mfu_engine", "mfu_http", "peak_mem_plain_gb",
    "peak_mem_engine_gb", "load_s", "load_phases", "cold_start_s", "ready_s", "cold_start_phases", "optimizations",
    "lossless", "concurrency", "ablations", "profile", "errors", "samples",
)  # fmt: skip
DIFFERENCE_FIELDS = ("seed", "mean_abs", "max_abs")
CONCURRENCY_FIELDS = ("clients", "requests", "images_per_s", "sequential_images_per_s", "p50_s", "p99_s")


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from localimg.backends.device import release_memory, resolve_device

    device = resolve_device("cpu" if args.tiny else args.device)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cases = TINY_CASES if args.tiny else FULL_CASES
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(cases)}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []  # models whose build or plain stage raised: no row
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    budget = Budget(args.deadline_s, time.monotonic() if started is None else started)

    def report(partial: dict[str, Any] | None = None, *, complete: bool = False) -> dict[str, Any]:
        return {
            "date": started_at,
            "complete": complete,  # false in the checkpoints written while the run goes on
            "device": device.name,
            "device_kind": device.kind,
            "host": platform.node(),
            "versions": {pkg: package_version(pkg) for pkg in ("torch", "diffusers", "transformers", "openai")},
            "tiny": args.tiny,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "deadline_s": args.deadline_s or None,
            "skipped": budget.skipped,
            "failed": failed,
            "rows": rows if partial is None else [*rows, partial],
        }

    def checkpoint(partial: dict[str, Any] | None) -> None:
        if args.out:
            write_json(Path(args.out), report(partial))

    for name in names:
        # --steps/--size shorten a dry run of the full-size path (e.g. on a CPU); the targets assume the defaults.
        case = cases[name]
        case = dataclasses.replace(case, steps=args.steps or case.steps, size=args.size or case.size)
        if not budget.allows(name):
            continue
        print(f"== {name}", flush=True)
        # One model's failure (a kernel, a compile, the disk) must not cost the next models their measurement.
        try:
            rows.append(bench_model(case, args, device, work, checkpoint, budget))
        except Exception as exc:  # noqa: BLE001 - reported in the JSON and on stderr
            traceback.print_exc()
            failed.append({"model": name, "error": describe_error(exc)})
            checkpoint(None)
        finally:
            if not args.tiny and not args.keep_weights:
                shutil.rmtree(work / "models" / name, ignore_errors=True)
            release_memory(device)
    final = report(complete=True)
    print_table(final)
    if args.out:
        write_json(Path(args.out), final)
        print(f"wrote {args.out}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke run, not a measurement)")
    parser.add_argument("--models", default="", help="comma-separated subset (default: all; --tiny: tiny-flux)")
    parser.add_argument("--repeats", type=int, help="timed runs per stage, median reported (default 5; --tiny: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing, per stage")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N (ignored with --tiny)")
    parser.add_argument("--work-dir", default=str(REPO_ROOT / ".bench"), help="model folders, caches, logs")
    parser.add_argument("--out", default="", help="write the JSON report here")
    parser.add_argument("--ablate", action="store_true", help="one engine run per optimization toggled")
    parser.add_argument("--variants", default="", help=f"comma-separated subset of --ablate ({', '.join(VARIANTS)})")
    parser.add_argument(
        "--deadline-s", type=float, default=0, help="start no model, HTTP stage or variant after this many seconds"
    )
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP stages")
    parser.add_argument(
        "--profile", action="store_true", help="one more engine image per model under torch's profiler (CUDA)"
    )
    parser.add_argument("--clients", type=int, help="concurrent clients in the concurrency run (default 4; --tiny: 2)")
    parser.add_argument("--requests", type=int, default=0, help="requests in the concurrency run (0: 2 x clients)")
    parser.add_argument("--output-format", default="png", choices=("png", "jpeg", "webp"))
    parser.add_argument("--steps", type=int, default=0, help="override every model's steps (dry runs; 0: its own)")
    parser.add_argument("--size", type=int, default=0, help="override every model's square side (dry runs; 0: its own)")
    parser.add_argument("--keep-weights", action="store_true", help="keep the full-size folders (disk!)")
    args = parser.parse_args(argv)
    # A --tiny run is a smoke test of the code path (CI runs it): by default one model and few repeats, ~30 s.
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 5
    if args.clients is None:
        args.clients = 2 if args.tiny else 4
    if args.tiny and not args.models:
        args.models = "tiny-flux"
    if args.repeats < 1 or args.warmup < 0 or args.clients < 1 or args.steps < 0 or args.size % 16:
        parser.error("--repeats >= 1, --warmup >= 0, --clients >= 1, --steps >= 0, --size a multiple of 16")
    if args.deadline_s < 0:
        parser.error("--deadline-s >= 0 (0: no deadline)")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()] or (
        list(VARIANTS) if args.ablate else []
    )
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


class Budget:
    """`--deadline-s`: whether a model, HTTP stage or variant may still start, and the names of those that
    could not."""

    def __init__(self, seconds: float, started: float) -> None:
        self.deadline = started + seconds if seconds else None
        self.skipped: list[str] = []

    def allows(self, stage: str) -> bool:
        if self.deadline is None or time.monotonic() < self.deadline:
            return True
        print(f"  skipped {stage}: past --deadline-s", flush=True)
        self.skipped.append(stage)
        return False


# --- one model --------------------------------------------------------------------------------------------


def bench_model(
    case: Case,
    args: argparse.Namespace,
    device: Any,
    work: Path,
    checkpoint: Callable[[dict[str, Any]], None],
    budget: Budget,
) -> dict[str, Any]:
    from localimg.backends.device import release_memory
    from localimg.registry import Registry
    from localimg.testing.flops import image_flops, mfu, peak_flops

    toml, in_memory = prepare_model(case, args, device, work)
    spec = Registry.load(toml).resolve(case.name)
    assert spec is not None
    peak = peak_flops(device.name) if device.kind == "cuda" else None
    flops = None
    if case.arch is not None:
        flops = image_flops(case.arch, case.size, case.size, case.steps,
                            text_tokens=case.max_sequence_length or 0, cfg=case.cfg).total  # fmt: skip

    # The row fills stage by stage and is checkpointed after each, so a run cut short (a device call's time
    # limit) still leaves what it measured in --out. Headline stages first, the ablations last.
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(
        model=case.name,
        family=case.family,
        size=f"{case.size}x{case.size}",
        steps=case.steps,
        flops_per_image=flops,
        ablations=[],
        errors={},  # stage -> the error of a stage that failed (engine: the row ends there; HTTP; a variant)
        samples={"plain": None, "engine": None, "http": None},
    )

    plain_times, plain_mem, reference = run_plain(case, in_memory, spec, device, args)
    del in_memory
    release_memory(device)  # the built pipeline: its hooks hold it in a reference cycle after a call
    plain_s = statistics.median(plain_times)
    row.update(plain_s=plain_s, mfu_plain=mfu(flops, plain_s, peak), peak_mem_plain_gb=plain_mem)
    row["samples"]["plain"] = plain_times
    checkpoint(row)

    try:
        engine = run_engine(case, spec, device, args, profile=args.profile)
    except Exception as exc:  # noqa: BLE001 - the row keeps the plain baseline; HTTP and variants would fail alike
        traceback.print_exc()
        row["errors"]["engine"] = describe_error(exc)
        return row
    engine_s = engine["median"]
    row.update(
        engine_s=engine_s,
        ratio_engine=engine_s / plain_s,
        steps_per_s=case.steps / engine_s,
        mfu_engine=mfu(flops, engine_s, peak),
        peak_mem_engine_gb=engine["peak_mem_gb"],
        load_s=engine["load_s"],
        load_phases=engine["load_phases"],
        optimizations=engine["optimizations"],
        lossless=difference(engine["image"], reference),
        profile=engine["profile"],
    )
    if engine["profile_error"]:
        row["errors"]["profile"] = engine["profile_error"]
    row["samples"]["engine"] = engine["times"]
    checkpoint(row)

    http = None
    if not args.no_http and budget.allows(f"{case.name}:http"):
        try:
            http = run_http(case, toml, device, args, work)
        except Exception as exc:  # noqa: BLE001 - the row keeps it; the variants still run
            traceback.print_exc()
            row["errors"]["http"] = describe_error(exc)
            checkpoint(row)
    if http is not None:
        http_s = http["median"]
        row.update(
            http_s=http_s,
            ratio_http=http_s / plain_s,
            http_overhead=http_s / engine_s - 1,
            mfu_http=mfu(flops, http_s, peak),
            cold_start_s=http["cold_start_s"],
            ready_s=http["ready_s"],
            cold_start_phases=http["cold_start_phases"],
            concurrency=http["concurrency"],
        )
        row["samples"]["http"] = http["times"]
        checkpoint(row)

    for variant in args.variants:
        if variant == "-cuda_graphs" and case.family not in ("sd15", "sdxl"):
            continue
        if not budget.allows(f"{case.name}:{variant}"):
            continue  # each is named in the report
        opt = dataclasses.replace(spec.optimize, **VARIANTS[variant])
        try:
            result = run_engine(case, dataclasses.replace(spec, optimize=opt), device, args)
        except Exception as exc:  # noqa: BLE001 - the row keeps it; the other variants still run
            traceback.print_exc()
            row["errors"][variant] = describe_error(exc)
            checkpoint(row)
            release_memory(device)
            continue
        row["ablations"].append({
            "variant": variant, "engine_s": result["median"], "ratio": result["median"] / plain_s,
            "load_s": result["load_s"], "optimizations": result["optimizations"],
            "difference": difference(result["image"], reference),
        })  # fmt: skip
        checkpoint(row)
    return row


def prepare_model(case: Case, args: argparse.Namespace, device: Any, work: Path) -> tuple[Path, Any]:
    """The models.toml registering `case`, and the pipeline still in memory when it was just built."""
    if args.tiny:
        from localimg.testing.tiny import build_tiny_models

        # The same cache as the tests' (tests/conftest.py), so a smoke run after the tests builds nothing.
        tiny_dir = Path(os.environ.get("LOCALIMG_TINY_DIR", REPO_ROOT / ".tiny"))
        build_tiny_models(tiny_dir)
        toml = work / f"{case.name}.toml"
        toml.write_text(models_toml(case, tiny_dir / case.name, work))
        return toml, None
    import torch

    from localimg.backends.device import torch_device
    from localimg.testing.full_size import build_full_size

    folder = work / "models" / case.name
    pipe = None
    if not (folder / "model_index.json").is_file():
        started = time.perf_counter()
        pipe = build_full_size(case.name, torch_device(device))
        if device.kind == "cuda":
            torch.cuda.synchronize()
        print(f"  built {case.name} in {time.perf_counter() - started:.1f} s", flush=True)
        check_disk_space(pipe, work)
        started = time.perf_counter()
        pipe.save_pretrained(folder, safe_serialization=True)
        print(f"  saved to {folder} in {time.perf_counter() - started:.1f} s", flush=True)
    if pipe is not None and device.kind != "cuda":
        pipe.to(torch.float32)  # what localimg uses off CUDA; bf16 convolutions on a CPU take minutes per image
    toml = work / f"{case.name}.toml"
    toml.write_text(models_toml(case, folder, work))
    return toml, pipe


def check_disk_space(pipe: Any, work: Path) -> None:
    """Fail before writing when the folder would not fit (FLUX is ~34 GB): a full disk half-way through a save
    costs minutes of device time and leaves a broken folder."""
    from localimg.backends.diffusers_backend import pipeline_bytes

    needed = pipeline_bytes(pipe) * 1.02 + 1e9
    free = shutil.disk_usage(work).free
    if free < needed:
        raise RuntimeError(f"{work}: {free / 1e9:.1f} GB free, {needed / 1e9:.1f} GB needed to save the model")


def models_toml(case: Case, folder: Path, work: Path) -> str:
    seq = "" if case.max_sequence_length is None else f", max_sequence_length = {case.max_sequence_length}"
    preset = f"{{ steps = {case.steps}, guidance = {case.guidance}{seq} }}"
    return f"""# Written by scripts/bench.py
default_model = "{case.name}"

[models.{case.name}]
family = "{case.family}"
source = {{ path = "{folder}" }}
default_size = "{case.size}x{case.size}"
max_batch = 1  # the benchmark never merges requests, so the warm-up compiles no batch of two
limits = {{ min_side = 64, max_side = 2048, max_pixels = 4194304, multiple_of = 16 }}
[models.{case.name}.quality]
auto = "medium"
low = {preset}
medium = {preset}
high = {preset}
[models.{case.name}.optimize]
warmup_sizes = ["{case.size}x{case.size}"]
compile_cache_dir = "{work / "compile-cache"}"
"""


# --- stage 1: plain diffusers -----------------------------------------------------------------------------


def run_plain(
    case: Case, pipe: Any, spec: Any, device: Any, args: argparse.Namespace
) -> tuple[list[float], float | None, Any]:
    """Seconds per image, peak GPU memory, and the image of LOSSLESS_SEED."""
    import torch

    from localimg.backends.device import release_memory, torch_device
    from localimg.backends.families import adapter_for
    from localimg.backends.optimizations import set_sdpa_priority

    # A previous model's localimg stage may have changed torch's global order.
    set_sdpa_priority("default", torch_device(device))
    if pipe is None:
        dtype = torch.bfloat16 if device.kind == "cuda" else torch.float32
        assert spec.source.path is not None
        pipe = adapter_for(case.family).pipeline_class.from_pretrained(str(spec.source.path), dtype=dtype)
        pipe.to(torch_device(device))
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = dict(prompt=PROMPT, height=case.size, width=case.size,
                                  num_inference_steps=case.steps, guidance_scale=case.guidance)  # fmt: skip
    if case.max_sequence_length is not None:
        kwargs["max_sequence_length"] = case.max_sequence_length
    where = torch_device(device)

    def once(seed: int) -> Any:
        return pipe(**kwargs, generator=torch.Generator(where).manual_seed(seed)).images[0]

    times, peak, image = timed(once, args, device)
    pipe = None  # the caller drops its reference too, so the device memory can go
    release_memory(device)
    print(f"  plain diffusers: {statistics.median(times):.3f} s", flush=True)
    return times, peak, image


# --- stage 2: localimg engine -----------------------------------------------------------------------------


def run_engine(
    case: Case, spec: Any, device: Any, args: argparse.Namespace, *, profile: bool = False
) -> dict[str, Any]:
    import torch
    import torch._dynamo

    from localimg.backends.base import GenerationPlan
    from localimg.backends.device import release_memory
    from localimg.backends.diffusers_backend import DiffusersBackend
    from localimg.service.engine import Engine
    from localimg.testing.kernel_profile import profile_kernels

    if device.kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
    backend = DiffusersBackend(spec, device)
    engine = Engine({spec.name: backend})
    loop = asyncio.new_event_loop()
    try:
        started = time.perf_counter()
        loop.run_until_complete(engine.preload([spec.name]))
        load_s = time.perf_counter() - started
        if not engine.is_loaded(spec.name):
            raise RuntimeError(f"{spec.name} failed to load: {engine.load_error(spec.name)}")

        def once(seed: int) -> Any:
            plan = GenerationPlan(model=spec.name, prompt=PROMPT, width=case.size, height=case.size,
                                  steps=case.steps, guidance_scale=case.guidance, seeds=(seed,),
                                  max_sequence_length=case.max_sequence_length)  # fmt: skip
            return loop.run_until_complete(engine.generate(plan)).images[0]

        times, peak, image = timed(once, args, device, reset_peak=False)
        kernels, profile_error = None, None
        if profile and device.kind == "cuda":
            try:
                kernels = profile_kernels(lambda: once(LOSSLESS_SEED))
                print_profile(kernels)
            except Exception as exc:  # noqa: BLE001 - a diagnostic: the stage's own figures stand
                traceback.print_exc()
                profile_error = describe_error(exc)
        assert backend.optimizations is not None
        described = backend.optimizations.describe()
    finally:
        engine.close()
        loop.close()
        # What a fresh server process would start from: without this, dynamo's per-code-object state carries
        # over, and the next model (or variant) of the same classes compiles for dynamic sizes.
        torch._dynamo.reset()
    release_memory(device)
    print(f"  localimg engine: {statistics.median(times):.3f} s (load {load_s:.1f} s; {described})", flush=True)
    return {"median": statistics.median(times), "times": times, "peak_mem_gb": peak, "load_s": load_s,
            "load_phases": dict(backend.load_phases), "optimizations": described, "image": image,
            "profile": kernels, "profile_error": profile_error}  # fmt: skip


# --- stage 3: HTTP ----------------------------------------------------------------------------------------


def run_http(case: Case, toml: Path, device: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import httpx
    from openai import OpenAI

    port = free_port()
    log_path = work / f"server-{case.name}.log"
    command = [sys.executable, "-m", "localimg.cli", "serve", "--config", str(toml), "--host", "127.0.0.1",
               "--port", str(port), "--device", device.torch_name, "--preload", case.name,
               # No merging: the warm-up compiles one image per call, and a merged call of 3 or 4 would compile
               # (and capture CUDA graphs) inside the timed concurrency run. Measure merging on its own.
               "--batch-window-ms", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": import_path(REPO_ROOT)}
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0, timeout=600)
    counter = iter(range(1_000_000))

    def request() -> float:
        started = time.perf_counter()
        result = client.images.generate(
            model=case.name, prompt=PROMPT, size=f"{case.size}x{case.size}", output_format=args.output_format,  # type: ignore[arg-type]
            extra_body={"seed": next(counter), "num_inference_steps": case.steps, "guidance_scale": case.guidance},
        )  # fmt: skip
        assert result.data and base64.b64decode(result.data[0].b64_json or "")
        return time.perf_counter() - started

    with log_path.open("w") as log:
        started = time.perf_counter()
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        try:
            ready_s = wait_healthy(f"http://127.0.0.1:{port}/health", server, httpx, log_path)
            request()
            cold_start_s = time.perf_counter() - started
            # Where the cold start went: the server's load phases, and the rest (imports, server, first request).
            phases = load_phases(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text, case.name)
            phases["other"] = cold_start_s - phases.get("total", 0.0)
            times, _, _ = timed(lambda seed: request(), args, device, reset_peak=False, measure_memory=False)
            concurrency = run_concurrency(request, args)
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()  # its GPU memory is free before the next stage loads
    print(f"  localimg HTTP: {statistics.median(times):.3f} s; cold start {cold_start_s:.1f} s; "
          f"{concurrency['images_per_s']:.2f} images/s with {concurrency['clients']} clients", flush=True)  # fmt: skip
    return {"median": statistics.median(times), "times": times, "ready_s": ready_s, "cold_start_s": cold_start_s,
            "cold_start_phases": phases, "concurrency": concurrency}  # fmt: skip


def load_phases(metrics_text: str, model: str) -> dict[str, float]:
    """`localimg_model_load_seconds{model=..., phase=...}` from a Prometheus text page, as {phase: seconds}."""
    pattern = re.compile(r'^localimg_model_load_seconds\{model="([^"]*)",phase="([^"]*)"\} (\S+)$')
    return {
        match[2]: float(match[3])
        for line in metrics_text.splitlines()
        if (match := pattern.match(line)) and match[1] == model
    }


def run_concurrency(request: Callable[[], float], args: argparse.Namespace) -> dict[str, Any]:
    total = args.requests or 2 * args.clients
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = iter(range(total))

    def client_loop() -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            seconds = request()
            with lock:
                latencies.append(seconds)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    sequential = [request() for _ in range(min(total, args.repeats))]
    return {
        "clients": args.clients,
        "requests": total,
        "images_per_s": total / wall,
        "sequential_images_per_s": len(sequential) / sum(sequential),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
    }


# --- measuring --------------------------------------------------------------------------------------------


def timed(
    once: Callable[[int], Any],
    args: argparse.Namespace,
    device: Any,
    *,
    reset_peak: bool = True,
    measure_memory: bool = True,
) -> tuple[list[float], float | None, Any]:
    """Seconds of each of `args.repeats` calls after `args.warmup` untimed ones, the peak GPU memory (GB), and
    what the first timed call (seed LOSSLESS_SEED) returned."""
    import torch

    cuda = device.kind == "cuda"
    if cuda and reset_peak:
        torch.cuda.reset_peak_memory_stats()
    for seed in range(args.warmup):
        once(seed)
    times = []
    first = None
    for index in range(args.repeats):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = once(LOSSLESS_SEED + index)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        first = result if index == 0 else first
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda and measure_memory else None
    return times, peak, first


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Whole or not at all: a time limit's SIGTERM can come mid-write, and the previous checkpoint must survive."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(partial, path)


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def difference(image: Any, reference: Any) -> dict[str, float]:
    """How far `image` is from `reference`, the same seed through plain diffusers, on 0..255 RGB pixels."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    plain = np.asarray(reference.convert("RGB"), dtype=np.float32)
    gap = np.abs(pixels - plain)
    return {"seed": LOSSLESS_SEED, "mean_abs": float(gap.mean()), "max_abs": float(gap.max())}


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def import_path(root: Path) -> str:
    """PYTHONPATH for a child process: `root` first, then the caller's own entries (on the GPU host, the folder
    its carried wheels were installed to)."""
    return os.pathsep.join(filter(None, (str(root), os.environ.get("PYTHONPATH"))))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, server: subprocess.Popen[bytes], httpx: Any, log_path: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < 900:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not healthy after 900 s:\n{log_path.read_text()[-3000:]}")


def print_profile(kernels: dict[str, Any]) -> None:
    kinds = ", ".join(f"{kind} {ms:.0f}" for kind, ms in kernels["by_kind_ms"].items() if ms >= 0.5)
    print(f"  profile: {kernels['wall_ms']:.0f} ms wall, GPU busy {kernels['busy_ms']:.0f} of a "
          f"{kernels['span_ms']:.0f} ms span; kernels (ms) {kinds}", flush=True)  # fmt: skip
    for entry in kernels["top"][:5]:
        print(f"    {entry['ms']:8.1f} ms {entry['calls']:6d}x {entry['kind']:<11} {entry['kernel'][:90]}", flush=True)


def print_table(report: dict[str, Any]) -> None:
    def fmt(value: Any, spec: str = ".3f") -> str:
        return "—" if value is None else format(value, spec)

    def gap(difference: dict[str, float] | None) -> str:  # mean / max absolute difference from plain, 0..255
        return "—" if difference is None else f"{difference['mean_abs']:.2f} / {difference['max_abs']:.0f}"

    print(f"\n{report['device']} · torch {report['versions']['torch']} · diffusers {report['versions']['diffusers']}"
          f" · {report['date']}{' · TINY SMOKE RUN, NOT A MEASUREMENT' if report['tiny'] else ''}")  # fmt: skip
    header = ("model", "size", "steps", "plain s", "engine s", "http s", "engine/plain", "http/plain", "http ovh",
              "MFU eng", "peak GB", "cold s", "img/s conc", "p50 s", "p99 s", "Δ plain")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in report["rows"]:
        conc = row["concurrency"] or {}
        cells = (row["model"], row["size"], str(row["steps"]), fmt(row["plain_s"]), fmt(row["engine_s"]),
                 fmt(row["http_s"]), fmt(row["ratio_engine"], ".2f"), fmt(row["ratio_http"], ".2f"),
                 fmt(row["http_overhead"], ".1%"), fmt(row["mfu_engine"], ".1%"), fmt(row["peak_mem_engine_gb"], ".1f"),
                 fmt(row["cold_start_s"], ".1f"), fmt(conc.get("images_per_s"), ".2f"), fmt(conc.get("p50_s")),
                 fmt(conc.get("p99_s")), gap(row["lossless"]))  # fmt: skip
        print("| " + " | ".join(cells) + " |")
        for ablation in row["ablations"]:
            print(f"|   {row['model']} {ablation['variant']} | | | | {fmt(ablation['engine_s'])} | | "
                  f"{fmt(ablation['ratio'], '.2f')} | | | | | | | | | {gap(ablation['difference'])} |")  # fmt: skip
    if report["skipped"]:
        print(f"skipped (past --deadline-s): {', '.join(report['skipped'])}")


if __name__ == "__main__":
    # A time limit's SIGTERM unwinds like an exception, so the HTTP stage's server is stopped, not orphaned on the GPU.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main(started=STARTED))
