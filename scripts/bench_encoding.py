"""Encoding benchmark: what a response's image costs to encode, per format, at one size.

Times localimg's encoders (`encode_image`: the parallel PNG writer, JPEG, WebP at localimg's effort) next to
Pillow's PNG at the same zlib level and WebP at Pillow's default effort, on synthetic images (noise, which
random-weight models produce, and a smooth gradient) and on any image files given. Prints a table, writes JSON.

    python scripts/bench_encoding.py --size 1024 --out bench_encoding.json photo.jpg drawing.png
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from localimg.imaging import png
from localimg.imaging.encoding import encode_image

QUALITY = 80  # output_compression for the lossy formats


def encoders() -> dict[str, Callable[[Image.Image], bytes]]:
    def pillow(image: Image.Image, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, **options)
        return buffer.getvalue()

    return {
        "png localimg": lambda image: encode_image(image, "png"),
        "png pillow": lambda image: pillow(image, format="PNG", compress_level=png.LEVEL),
        "jpeg localimg": lambda image: encode_image(image, "jpeg", QUALITY),
        "webp localimg": lambda image: encode_image(image, "webp", QUALITY),
        "webp pillow default": lambda image: pillow(image, format="WEBP", quality=QUALITY),
    }


def images(size: int, files: list[Path]) -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    found = {
        "noise": Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
        "gradient": Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)),
    }
    for file in files:
        found[file.name] = Image.open(file).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="Images to include (resized to --size).")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench_encoding.json"))
    args = parser.parse_args()

    rows = []
    for name, image in images(args.size, args.files).items():
        for encoder, encode in encoders().items():
            encode(image)  # warm-up: thread pool, codec tables
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                data = encode(image)
                times.append(time.perf_counter() - started)
            rows.append({"image": name, "encoder": encoder, "ms": 1000 * statistics.median(times),
                         "kb": len(data) / 1024, "samples_ms": [1000 * t for t in times]})  # fmt: skip
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "size": args.size,
        "repeats": args.repeats,
        "rows": rows,
    }
    print(f"{args.size}x{args.size}, median of {args.repeats}, {os.cpu_count()} CPUs")
    print("| image | encoder | ms | KB |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['image']} | {row['encoder']} | {row['ms']:.1f} | {row['kb']:.0f} |")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
