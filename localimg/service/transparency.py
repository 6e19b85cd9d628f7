"""`background="transparent"`: how a job is run so that its images can be matted, and the matting itself.

Two ways, chosen by the matting the server was built with (backends/matting.py `load_matting`):

- **A learned background-removal model** (declared as `[matting]` in models.toml, weights present): the job runs
  unchanged and the model cuts the subject out of each image.
- **The built-in key-colour method** (no extra weights): a generation is run as an inpainting of a subject region
  (a centred ellipse) on a flat key-colour canvas, with the prompt asking for that flat background; everything
  outside the region stays exactly the key colour, and chroma-keying with soft edges and colour decontamination
  (imaging/alpha.py) turns the key colour into transparency. Edits keep their inputs, so the prompt changes, and a
  cut-out's transparent parts are flattened onto the key colour instead of white: a background the model keeps or
  paints in the key colour is keyed out, and input pixels outside a mask come back exactly, alpha included.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from PIL import Image

from localimg.backends.base import EditInputs
from localimg.imaging.alpha import (
    KeyColourMatting,
    Matting,
    flatten,
    key_canvas,
    subject_region,
    transparency_prompt,
)
from localimg.imaging.masks import keep_outside
from localimg.service.planning import KeepRegion

if TYPE_CHECKING:
    from localimg.service.planning import ImageJob


class TransparencyStage:
    def __init__(self, matting: Matting) -> None:
        self.matting = matting

    @property
    def keyed(self) -> bool:
        return isinstance(self.matting, KeyColourMatting)

    def prepare(self, job: ImageJob) -> ImageJob:
        """The job to run for `job`: itself unless it wants transparency the key-colour way."""
        if job.output.background != "transparent" or not self.keyed:
            return job
        assert isinstance(self.matting, KeyColourMatting)
        plan = dataclasses.replace(job.plan, prompt=transparency_prompt(job.plan.prompt))
        if plan.edit is not None:
            if job.cutout is not None:
                # The cut-out's transparent parts start as the key colour, which the model keeps and the keying
                # removes again (flattened on white, they would come back an opaque white).
                images = (flatten(job.cutout, self.matting.key), *plan.edit.images[1:])
                plan = dataclasses.replace(plan, edit=dataclasses.replace(plan.edit, images=images))
            return dataclasses.replace(job, plan=plan)
        size = (plan.width, plan.height)
        canvas = key_canvas(size, self.matting.key)
        region = subject_region(size)
        plan = dataclasses.replace(plan, edit=EditInputs(images=(canvas,), mask=region, strength=1.0))
        return dataclasses.replace(job, plan=plan, keep=KeepRegion(original=canvas, region=region, matte_kept=True))

    def finish(self, job: ImageJob, image: Image.Image) -> Image.Image:
        """RGBA for transparent jobs, `image` otherwise. `image` already has the kept region copied back."""
        if job.output.background != "transparent":
            return image
        # The whole image is matted (the subject's edges need their surroundings), ...
        matted = self.matting.matte(image.convert("RGB"))
        if job.keep is not None and not job.keep.matte_kept:
            # ... but outside a client's mask nothing is edited, so the input comes back exactly, alpha included
            # (keying it would clear and despill any greenish pixel there).
            return keep_outside(job.keep.original, matted, job.keep.region)
        return matted
