"""`scripts/bench_encoding.py` runs and its JSON has a row per image and encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bench_encoding_writes_every_row(tmp_path: Path):
    picture = tmp_path / "picture.png"
    Image.new("RGB", (40, 30), (10, 200, 90)).save(picture)
    out = tmp_path / "encoding.json"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "bench_encoding.py"), "--size", "64", "--repeats", "1",
               "--out", str(out), str(picture)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    pairs = {(row["image"], row["encoder"]) for row in report["rows"]}
    assert {image for image, _ in pairs} == {"noise", "gradient", "picture.png"} and len(pairs) == 15
    assert all(row["ms"] > 0 and row["kb"] > 0 for row in report["rows"])
