"""Load benchmark: throughput and p50/p99 latency of concurrent generations, with and without micro-batching.

By default it starts `localimg serve` itself on 127.0.0.1 with the tiny random-weight models (built into .tiny/
if missing), once with batching and once with `--batch-window-ms 0`; with --url it measures that server as it
is. Bounded: --requests per run, and a run stops sending after --max-seconds.

    python scripts/bench_load.py --requests 96 --concurrency 16 --out bench_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bench import import_path  # scripts/ is on sys.path: this file runs as a script beside bench.py
from openai import OpenAI

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="Measure this running server (root URL) instead of starting one.")
    parser.add_argument("--api-key", default="sk-local")
    parser.add_argument("--model", default="tiny-sd15")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--quality", default="low")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--max-batch", type=int, default=8, help="For the batched run of a started server.")
    parser.add_argument("--out", type=Path, default=Path("bench_load.json"))
    args = parser.parse_args()

    runs: list[dict[str, object]] = []
    if args.url:
        runs.append({"label": "as configured", **measure(args.url, args)})
    else:
        config = build_tiny()
        for label, flags in (
            ("batching", ["--batch-window-ms", "10", "--max-batch", str(args.max_batch)]),
            ("no batching", ["--batch-window-ms", "0"]),
        ):
            with started_server(config, args.model, flags) as root:
                runs.append({"label": label, "flags": flags, **measure(root, args)})
    report = {
        "model": args.model, "size": args.size, "quality": args.quality, "requests": args.requests,
        "concurrency": args.concurrency, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "runs": runs,
    }  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2))
    for run in runs:
        print(
            f"{run['label']:>14}: {run['completed']}/{args.requests} ok in {run['seconds']:.1f} s, "
            f"{run['images_per_s']:.2f} img/s, p50 {run['p50_s']:.2f} s, p99 {run['p99_s']:.2f} s, "
            f"{run['backend_calls']} backend calls"
        )
    print(f"wrote {args.out}")


def measure(root: str, args: argparse.Namespace) -> dict[str, object]:
    client = OpenAI(base_url=f"{root}/v1", api_key=args.api_key, max_retries=3, timeout=args.max_seconds)
    headers = {"authorization": f"Bearer {args.api_key}"}
    calls_before = backend_calls(root, headers)
    deadline = time.monotonic() + args.max_seconds

    def one(seed: int) -> float | None:
        if time.monotonic() > deadline:
            return None
        started = time.monotonic()
        client.images.generate(
            model=args.model, prompt=f"bench {seed}", size=args.size, quality=args.quality, extra_body={"seed": seed}
        )
        return time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        latencies = [lat for lat in pool.map(one, range(args.requests)) if lat is not None]
    seconds = time.monotonic() - started
    latencies.sort()
    return {
        "completed": len(latencies),
        "seconds": seconds,
        "images_per_s": len(latencies) / seconds,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "backend_calls": backend_calls(root, headers) - calls_before,
    }


def backend_calls(root: str, headers: dict[str, str]) -> float:
    text = httpx.get(f"{root}/metrics", headers=headers, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("localimg_backend_calls_total{")
    )


def build_tiny() -> Path:
    sys.path.insert(0, str(REPO))
    from localimg.testing.tiny import build_tiny_models

    return build_tiny_models(Path(os.environ.get("LOCALIMG_TINY_DIR", REPO / ".tiny")))


class started_server:  # noqa: N801 - used as a context manager, like open()
    def __init__(self, config: Path, model: str, flags: list[str]) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        command = [sys.executable, "-m", "localimg.cli", "serve", "--config", str(config), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--preload", model, "--max-queue", "256", *flags]
        env = {**os.environ, "PYTHONPATH": import_path(REPO)}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> str:
        root = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{root}/ready", timeout=2).status_code == 200:
                    return root
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready after 180 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(60)


if __name__ == "__main__":
    main()
