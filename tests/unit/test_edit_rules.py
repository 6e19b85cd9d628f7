"""Pure rules behind edits: the schedule length that runs the plan's steps, and the models.toml keys `variant`
and `max_input_images`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from localimg.backends.base import EditInputs
from localimg.backends.families import (
    MAX_SCHEDULE,
    FamilyAdapter,
    edit_strength,
    flow_match_steps_run,
    schedule_length,
)
from localimg.errors import RegistryError
from localimg.registry import Registry

RULES = {"unet": FamilyAdapter.steps_run, "flow": flow_match_steps_run}
STRENGTHS = [1.0, 0.99, 0.75, 0.6, 0.5, 0.35, 0.3, 0.25, 0.1, 0.05, 0.01]


def test_the_edit_rules_import_no_torch():
    code = "import sys, localimg.backends.families; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 14, 28, 50])
@pytest.mark.parametrize("strength", STRENGTHS)
def test_schedule_runs_exactly_the_plans_steps(rule: str, steps: int, strength: float):
    steps_run = RULES[rule]
    length = schedule_length(steps, strength, steps_run)
    if steps / strength <= MAX_SCHEDULE:
        assert steps_run(length, strength) == steps
        # as near the requested strength as the pipelines' rounding allows
        assert abs(steps / length - strength) <= strength / steps + 1e-9
    else:
        assert length == MAX_SCHEDULE and 1 <= steps_run(length, strength) <= steps


@pytest.mark.parametrize("rule", RULES)
def test_full_strength_keeps_the_schedule(rule: str):
    assert schedule_length(28, 1.0, RULES[rule]) == 28


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("strength", [0.0, -1.0, 1e-6])
def test_no_strength_still_runs_one_step(rule: str, strength: float):
    clamped = edit_strength(EditInputs((), strength=strength))
    assert clamped > 0
    assert RULES[rule](schedule_length(28, clamped, RULES[rule]), clamped) == 1


def test_strength_above_one_is_one():
    assert edit_strength(EditInputs((), strength=1.5)) == 1.0


def load(tmp_path: Path, table: str) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(f'[models.m]\nsource = {{ path = "w" }}\n{table}\n')
    return Registry.load(path)


def test_variant_and_max_input_images_default_to_one_plain_image(tmp_path: Path):
    spec = load(tmp_path, 'family = "sdxl"').resolve("m")
    assert spec is not None and spec.variant == "base" and spec.max_input_images == 1


def test_kontext_may_take_references(tmp_path: Path):
    spec = load(tmp_path, 'family = "flux"\nvariant = "kontext"\nmax_input_images = 4').resolve("m")
    assert spec is not None and spec.variant == "kontext" and spec.max_input_images == 4


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ('family = "sd15"\nvariant = "fill"', "variant = 'fill'; sd15 models are one of base"),
        ('family = "flux"\nvariant = "redux"', "variant = 'redux'"),
        ('family = "flux"\nmax_input_images = 2', "needs a variant that takes reference images (kontext)"),
        ('family = "flux"\nvariant = "fill"\nmax_input_images = 2', "variant is 'fill'"),
        ('family = "flux"\nvariant = "kontext"\nmax_input_images = 17', "max_input_images must be an integer in 1..16"),
        ('family = "flux"\nvariant = "kontext"\nmax_input_images = 0', "in 1..16"),
        ('family = "flux"\nmax_input_images = "2"', "max_input_images must be an integer"),
    ],
)
def test_bad_variant_or_max_input_images(tmp_path: Path, table: str, fragment: str):
    with pytest.raises(RegistryError) as info:
        load(tmp_path, table)
    assert fragment in str(info.value) and "[models.m]" in str(info.value)
