"""Edits on the tiny families: image-to-image and inpainting through pipelines derived from the loaded one, and
FLUX.1 Kontext with reference images.

The tiny VAEs have random weights, so decoding an encoded image does not give it back. "Close to the input" is
therefore measured against the round trip the model can make of it (an edit at the lowest strength).
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from localimg.backends.base import EditInputs, GenerationPlan
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.backends.flux import reference_row
from localimg.registry import Registry

FAMILIES = ("tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3")
SIZE = 64
PROMPT = "a lighthouse on a tiny island, watercolor"


@pytest.fixture(scope="module")
def registry(tiny_models_toml: Path) -> Registry:
    return Registry.load(tiny_models_toml)


def make_backend(registry: Registry, name: str) -> DiffusersBackend:
    spec = registry.resolve(name)
    assert spec is not None
    backend = DiffusersBackend(dataclasses.replace(spec, max_batch=2), resolve_device("cpu"))
    backend.load()
    return backend


@pytest.fixture(scope="module", params=FAMILIES)
def backend(request: pytest.FixtureRequest, registry: Registry) -> Iterator[DiffusersBackend]:
    backend = make_backend(registry, request.param)
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def kontext(registry: Registry) -> Iterator[DiffusersBackend]:
    backend = make_backend(registry, "tiny-flux-kontext")
    yield backend
    backend.unload()


def picture(kind: int, width: int = SIZE, height: int = SIZE) -> Image.Image:
    """Two unlike synthetic pictures: smooth gradients (0) and stripes with a disc (1)."""
    y, x = np.mgrid[0:height, 0:width] * (256 // max(width, height))
    if kind == 0:
        pixels = np.stack([x, y, (x + y) // 2], axis=-1)
    else:
        pixels = np.stack([255 - y, (x // 16 % 2) * 255, x], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8))
    if kind == 1:
        ImageDraw.Draw(image).ellipse([width // 4, height // 4, width * 3 // 4, height * 3 // 4], fill=(250, 240, 20))
    return image


def square_mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle([16, 16, 47, 47], fill=255)
    return mask


def plan_for(
    backend: DiffusersBackend, edit: EditInputs, seeds: tuple[int, ...] = (7,), steps: int = 2, prompt: str = PROMPT
) -> GenerationPlan:
    preset = backend.spec.quality["low"]
    return GenerationPlan(
        model=backend.spec.name,
        prompt=prompt,
        width=SIZE,
        height=SIZE,
        steps=steps,
        guidance_scale=preset.guidance,
        seeds=seeds,
        max_sequence_length=preset.max_sequence_length,
        edit=edit,
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def test_img2img_size_count_and_seeds(backend: DiffusersBackend):
    edit = EditInputs((picture(0),), strength=0.6)
    images = backend.generate([plan_for(backend, edit, seeds=(1, 2, 3))])  # two calls: max_batch is 2
    assert len(images) == 3
    assert all(image.mode == "RGB" and image.size == (SIZE, SIZE) for image in images)
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))
    for seed, image in zip((1, 2, 3), images, strict=True):
        (alone,) = backend.generate([plan_for(backend, edit, seeds=(seed,))])
        assert np.abs(pixels(image) - pixels(alone)).max() <= 1, seed  # batched kernels may round differently


def test_img2img_result_depends_on_the_input(backend: DiffusersBackend):
    (first,) = backend.generate([plan_for(backend, EditInputs((picture(0),), strength=0.6))])
    (other,) = backend.generate([plan_for(backend, EditInputs((picture(1),), strength=0.6))])
    assert not np.array_equal(pixels(first), pixels(other))


def test_lower_strength_stays_closer_to_the_input(backend: DiffusersBackend):
    source = picture(1)
    (round_trip,) = backend.generate([plan_for(backend, EditInputs((source,), strength=0.0))])
    by_strength = [
        distance(backend.generate([plan_for(backend, EditInputs((source,), strength=strength))])[0], round_trip)
        for strength in (0.1, 0.6, 1.0)
    ]
    assert by_strength[0] < by_strength[1] <= by_strength[2], by_strength


@pytest.mark.parametrize("strength", [0.9, 1.0])
def test_inpaint_changes_the_masked_region_most(backend: DiffusersBackend, strength: float):
    mask = square_mask()
    edit = EditInputs((picture(0),), mask=mask, strength=strength)
    (fox,) = backend.generate([plan_for(backend, edit, prompt="a red fox in the snow")])
    (ship,) = backend.generate([plan_for(backend, edit, prompt="a ship on a stormy sea")])
    assert fox.mode == "RGB" and fox.size == (SIZE, SIZE)
    # Same seed, other prompt: only the denoised region follows the prompt; outside, the input's latents are put
    # back after every step, and only the VAE's reach across the mask's edge lets differences through.
    changed = np.abs(pixels(fox) - pixels(ship)).mean(axis=-1)
    inside = np.asarray(mask) > 0
    assert changed[inside].mean() > 2 * changed[~inside].mean()


@pytest.mark.parametrize(
    ("steps", "strength", "masked"), [(2, 0.3, False), (3, 0.25, False), (2, 0.6, True), (2, 1.0, True)]
)
def test_edits_run_the_plans_steps(backend: DiffusersBackend, steps: int, strength: float, masked: bool):
    edit = EditInputs((picture(0),), mask=square_mask() if masked else None, strength=strength)
    seen: list[tuple[int, int]] = []
    backend.generate([plan_for(backend, edit, steps=steps)], on_step=lambda p: seen.append((p.step, p.steps)))
    assert seen == [(step, steps) for step in range(1, steps + 1)]


def test_edit_pipelines_share_the_loaded_weights(backend: DiffusersBackend):
    backend.generate([plan_for(backend, EditInputs((picture(0),), strength=0.5))])
    backend.generate([plan_for(backend, EditInputs((picture(0),), mask=square_mask(), strength=0.5))])
    base = backend._pipe
    assert base is not None
    derived = list(backend._derived.values())
    assert {type(pipe) for pipe in derived} == {backend.adapter.img2img_class, backend.adapter.inpaint_class}
    for pipe in derived:
        for name, component in base.components.items():
            if component is not None:
                assert pipe.components[name] is component, name


def test_unload_drops_the_edit_pipelines(registry: Registry):
    backend = make_backend(registry, "tiny-sd15")
    backend.generate([plan_for(backend, EditInputs((picture(0),), strength=0.5))])
    (derived,) = backend._derived.values()
    alive = weakref.ref(derived)
    del derived
    backend.unload()
    gc.collect()
    assert backend._derived == {} and alive() is None
    backend.load()
    assert len(backend.generate([plan_for(backend, EditInputs((picture(0),), strength=0.5))])) == 1


# --- FLUX.1 Kontext ----------------------------------------------------------------------------------------


def test_the_reference_row_is_sized_before_its_images_are_scaled():
    """A tall image next to wide ones used to be scaled to a row of tens of megapixels first; now the row is
    about the output's area whatever the shapes, and each image keeps its place and aspect."""
    red, blue = Image.new("RGB", (100, 4000), (255, 0, 0)), Image.new("RGB", (4000, 100), (0, 0, 255))
    row = reference_row([red, blue, blue, blue], 1024 * 1024)
    assert row.width % 16 == 0 and row.height % 16 == 0 and row.width * row.height <= 1024 * 1024
    pixels = np.asarray(row)
    assert (pixels[:, 0] == (255, 0, 0)).all() and (pixels[:, -1] == (0, 0, 255)).all()
    red_width = int((pixels[0, :, 0] > 128).sum())
    assert abs(red_width / row.width - (1 / 40) / (1 / 40 + 3 * 40)) < 0.01
    single = reference_row([Image.new("RGB", (3000, 2000))], 1024 * 1024)
    assert single.size == (1248, 832)
    # A short row: every slot keeps its image's aspect (within one rounding to 16 over the row).
    wide = reference_row([Image.new("RGB", (4000, 100))] * 16, 1024 * 1024)
    assert abs(wide.width / 16 / wide.height - 40) < 40 * 16 / wide.width + 0.01


def test_kontext_is_declared_with_references(kontext: DiffusersBackend):
    assert kontext.spec.variant == "kontext" and kontext.spec.max_input_images == 16


def test_kontext_edit_follows_the_input_and_the_references(kontext: DiffusersBackend):
    source = picture(0)
    (alone,) = kontext.generate([plan_for(kontext, EditInputs((source,)))])
    (other_input,) = kontext.generate([plan_for(kontext, EditInputs((picture(1),)))])
    with_refs = kontext.generate([plan_for(kontext, EditInputs((source, picture(1, 48, 64), picture(0, 80, 40))))])
    (other_refs,) = kontext.generate([plan_for(kontext, EditInputs((source, picture(0, 48, 64), picture(1, 80, 40))))])
    for image in (alone, other_input, *with_refs, other_refs):
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
    assert not np.array_equal(pixels(alone), pixels(other_input))
    assert not np.array_equal(pixels(alone), pixels(with_refs[0]))
    assert not np.array_equal(pixels(with_refs[0]), pixels(other_refs))
    (again,) = kontext.generate([plan_for(kontext, EditInputs((source,)))])
    assert np.array_equal(pixels(alone), pixels(again))


def test_kontext_edit_honours_strength(kontext: DiffusersBackend):
    source = picture(0)
    (near,) = kontext.generate([plan_for(kontext, EditInputs((source,), strength=0.001))])
    (mid,) = kontext.generate([plan_for(kontext, EditInputs((source,), strength=0.45))])
    (far,) = kontext.generate([plan_for(kontext, EditInputs((source,), strength=1.0))])
    assert np.abs(pixels(mid) - pixels(near)).mean() < np.abs(pixels(far) - pixels(near)).mean()


def test_kontext_inpaint_with_references(kontext: DiffusersBackend):
    mask = square_mask()
    edit = EditInputs((picture(0), picture(1, 32, 64)), mask=mask, strength=1.0)
    seen: list[int] = []
    (fox,) = kontext.generate([plan_for(kontext, edit, prompt="a red fox")], on_step=lambda p: seen.append(p.steps))
    (ship,) = kontext.generate([plan_for(kontext, edit, prompt="a ship on a stormy sea")])
    assert fox.size == (SIZE, SIZE) and seen == [2, 2]
    changed = np.abs(pixels(fox) - pixels(ship)).mean(axis=-1)
    inside = np.asarray(mask) > 0
    assert changed[inside].mean() > 2 * changed[~inside].mean()
    assert {type(pipe).__name__ for pipe in kontext._derived.values()} >= {"FluxKontextInpaintPipeline"}


def test_kontext_generates_without_an_edit(kontext: DiffusersBackend):
    preset = kontext.spec.quality["low"]
    plan = GenerationPlan(
        model=kontext.spec.name, prompt=PROMPT, width=SIZE, height=SIZE, steps=1,
        guidance_scale=preset.guidance, seeds=(3,), max_sequence_length=preset.max_sequence_length,
    )  # fmt: skip
    (image,) = kontext.generate([plan])
    assert image.size == (SIZE, SIZE)


# --- FLUX.1 Fill -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fill(registry: Registry) -> Iterator[DiffusersBackend]:
    backend = make_backend(registry, "tiny-flux-fill")
    yield backend
    backend.unload()


@pytest.mark.parametrize(
    ("mask", "strength"), [(None, None), (None, 0.6), (square_mask(), 0.6), (square_mask(), 1.0)], ids=str
)
def test_fill_runs_every_job(fill: DiffusersBackend, mask: Image.Image | None, strength: float | None):
    edit = None if strength is None else EditInputs((picture(0),), mask=mask, strength=strength)
    seen: list[int] = []
    images = fill.generate(
        [dataclasses.replace(plan_for(fill, EditInputs((picture(0),))), edit=edit, seeds=(1, 2, 3))],
        on_step=lambda p: seen.append(p.steps),
    )
    assert [image.size for image in images] == [(SIZE, SIZE)] * 3 and seen == [2] * 4
    assert [type(pipe).__name__ for pipe in fill._derived.values()] == ["FluxFillPipeline"]


def test_fill_result_depends_on_the_input(fill: DiffusersBackend):
    (first,) = fill.generate([plan_for(fill, EditInputs((picture(0),), mask=square_mask(), strength=1.0))])
    (other,) = fill.generate([plan_for(fill, EditInputs((picture(1),), mask=square_mask(), strength=1.0))])
    assert not np.array_equal(pixels(first), pixels(other))
