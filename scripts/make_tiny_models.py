"""Build the tiny random-weight test pipelines and print the path of the models.toml that registers them.

python scripts/make_tiny_models.py --out .tiny          # reuses a finished build
python scripts/make_tiny_models.py --out .tiny --force  # rebuilds from scratch
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Lets the script run from a checkout without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localimg.testing.tiny import build_tiny_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build tiny random-weight diffusers pipelines for tests.")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a finished build is present")
    args = parser.parse_args(argv)
    print(build_tiny_models(args.out, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
