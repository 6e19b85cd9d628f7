"""The images service: wire request -> plan -> engine -> encoded images -> wire response."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localimg.errors import DeviceFailedError
from localimg.imaging.alpha import KeyColourMatting
from localimg.imaging.encoding import MIME_TYPES, encode_image
from localimg.imaging.inputs import InputLimits, decode_image, fit_pixels
from localimg.imaging.masks import keep_outside
from localimg.imaging.pools import thread_pool
from localimg.protocol import (
    ImageData,
    ImageEditRequest,
    ImageGenerateRequest,
    ImagesResponse,
    ImageVariationRequest,
    InputTokensDetails,
    ModelCard,
    ModelList,
    OutputTokensDetails,
    Usage,
)
from localimg.service.edit_planning import InputImage, plan_edit, plan_variation
from localimg.service.planning import SEED_MODULUS, ImageJob, image_tokens, plan_generation
from localimg.service.streaming import EventPrefix, JobStream
from localimg.service.transparency import TransparencyStage

if TYPE_CHECKING:
    from PIL import Image

    from localimg.registry import ModelSpec, Registry
    from localimg.service.engine import Engine
    from localimg.service.image_store import ImageStorage

log = logging.getLogger(__name__)


class ImageService:
    def __init__(
        self,
        registry: Registry,
        engine: Engine,
        store: ImageStorage,
        *,
        transparency: TransparencyStage | None = None,
        input_limits: InputLimits | None = None,
        random_seed: Callable[[], int] = lambda: secrets.randbelow(SEED_MODULUS),
        clock: Callable[[], float] = time.time,
        has_weights: Callable[[ModelSpec], bool] = lambda spec: True,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.store = store
        self.transparency = transparency or TransparencyStage(KeyColourMatting())
        self.input_limits = input_limits or InputLimits()
        # A model sees a reference image at most at the output's size, so each is scaled down to this as it is
        # decoded: sixteen large photos would otherwise all be held at full size (gigabytes) until the job is done.
        self._reference_pixels = max(spec.limits.max_pixels for spec in registry)
        self._random_seed = random_seed
        self._clock = clock
        self._has_weights = has_weights  # a file check: whether a model (or alias) is listed in /v1/models
        self.started_at = int(clock())

    async def generate(self, request: ImageGenerateRequest, url_base: str) -> ImagesResponse:
        """Serve one generations request. `url_base` is where `GET {url_base}/{id}` serves stored images."""
        return await self._respond(self.plan_generation(request), url_base)

    async def edit(
        self, request: ImageEditRequest, images: Sequence[Upload], mask: Upload | None, url_base: str
    ) -> ImagesResponse:
        """Serve one edits request: `images` are the uploaded files in order (`image` or `image[]`)."""
        return await self._respond(await self.plan_edit(request, images, mask), url_base)

    async def plan_edit(self, request: ImageEditRequest, images: Sequence[Upload], mask: Upload | None) -> ImageJob:
        """Decode the uploads and resolve the edit, off the event loop (resizing a large photo takes a second);
        raises InvalidRequestError, or the engine's refusal before any decoding when it takes no jobs now."""
        self.engine.check_admission()

        def decode_and_plan() -> ImageJob:
            first, *references = images
            limit = self._reference_pixels
            inputs = [self._decode(first), *(self._decode(upload, max_pixels=limit) for upload in references)]
            mask_input = self._decode(mask) if mask else None
            return plan_edit(request, inputs, mask_input, self.registry, self._random_seed)

        return await asyncio.to_thread(decode_and_plan)

    async def variation(self, request: ImageVariationRequest, image: Upload, url_base: str) -> ImagesResponse:
        self.engine.check_admission()

        def decode_and_plan() -> ImageJob:
            return plan_variation(request, self._decode(image), self.registry, self._random_seed)

        return await self._respond(await asyncio.to_thread(decode_and_plan), url_base)

    def _decode(self, upload: Upload, *, max_pixels: int | None = None) -> InputImage:
        image = decode_image(upload.data, param=upload.param, limits=self.input_limits)
        return InputImage(upload.param, image if max_pixels is None else fit_pixels(image, max_pixels))

    async def _respond(self, requested: ImageJob, url_base: str) -> ImagesResponse:
        # The job run may carry words of the service's own (transparency); usage and revised_prompt are the client's.
        job = self.transparency.prepare(requested)
        plan = job.plan
        log.info(
            "%s model=%s size=%s quality=%s steps=%d n=%d seeds=%s background=%s",
            "edit" if plan.edit else "generate", plan.model, job.size, job.quality, plan.steps, plan.n, plan.seeds,
            job.output.background,
        )  # fmt: skip
        result = await self.engine.generate(plan, usage_prompt=requested.plan.prompt)
        # Compositing, matting and encoding a large PNG take tens of milliseconds: keep them off the event loop.
        files = await asyncio.to_thread(self.finish_and_encode, job, result.images)
        return ImagesResponse(
            created=int(self._clock()),
            data=await self._image_data(files, requested, url_base),
            **self._gpt_image_fields(requested, result.prompt_tokens),
        )

    def finish_and_encode(self, job: ImageJob, images: Sequence[Image.Image]) -> list[bytes]:
        """The job's final files: kept region copied back, background matted, encoded as asked. With n > 1 the
        encodings run in parallel (the codecs release the GIL); matting stays sequential, as a learned matting
        model is one module on the device."""
        finished = [self.finish(job, image) for image in images]

        def encode(image: Image.Image) -> bytes:
            return encode_image(image, job.output.format, job.output.compression)

        if len(finished) == 1:
            return [encode(finished[0])]
        return list(thread_pool("encode").map(encode, finished))

    def finish(self, job: ImageJob, image: Image.Image) -> Image.Image:
        if job.keep is not None:
            image = keep_outside(job.keep.original, image, job.keep.region)
        try:
            return self.transparency.finish(job, image)
        except DeviceFailedError as failure:  # a learned matting found the device lost: so is the engine's
            self.engine.report_device_failure(failure)
            raise

    def plan_generation(self, request: ImageGenerateRequest) -> ImageJob:
        """Resolve a generations request (raises InvalidRequestError), e.g. before a stream starts."""
        return plan_generation(request, self.registry, self._random_seed)

    def stream(self, requested: ImageJob, event_prefix: EventPrefix) -> JobStream:
        """Submit a job planned with `stream` set (a refusal raises here), to be read as
        `{event_prefix}.partial_image` / `.completed` events (see service/streaming.py for their order and usage).
        Domain errors raised while it runs propagate from the events."""
        job = self.transparency.prepare(requested)
        plan = job.plan
        log.info(
            "stream %s model=%s size=%s quality=%s steps=%d n=%d partial_images=%d seeds=%s",
            event_prefix, plan.model, job.size, job.quality, plan.steps, plan.n,
            job.stream.partial_images if job.stream else 0, plan.seeds,
        )  # fmt: skip
        return JobStream(
            self.engine,
            job,
            event_prefix,
            usage_prompt=requested.plan.prompt,
            usage=lambda tokens: self._usage(requested, tokens),
            finish=lambda image: self.finish(job, image),
            clock=self._clock,
        )

    def list_models(self) -> ModelList:
        """The models (names and aliases) a client can use now: those whose weights are on disk. Checked on each
        call, so weights put in place show up without a restart; the file checks run off the event loop."""
        # One file check per model, not per alias (the default model alone has eight).
        usable = {spec.name for spec in self.registry if self._has_weights(spec)}
        ids = [model_id for model_id in self.registry.public_ids() if self._resolved_name(model_id) in usable]
        return ModelList(data=[self._card(model_id) for model_id in ids])

    def get_model(self, model_id: str) -> ModelCard | None:
        spec = self.registry.resolve(model_id)
        return self._card(model_id) if spec is not None and self._has_weights(spec) else None

    def _resolved_name(self, model_id: str) -> str | None:
        spec = self.registry.resolve(model_id)
        return None if spec is None else spec.name

    def _card(self, model_id: str) -> ModelCard:
        return ModelCard(id=model_id, created=self.started_at, owned_by="localimg")

    async def _image_data(self, files: list[bytes], job: ImageJob, url_base: str) -> list[ImageData]:
        revised = job.plan.prompt if job.api_style == "dall-e-3" else None
        if job.response_format == "url":
            fmt = job.output.format
            ids = [await self.store.put(data, MIME_TYPES[fmt], fmt) for data in files]
            return [ImageData(url=f"{url_base.rstrip('/')}/{image_id}", revised_prompt=revised) for image_id in ids]
        # Base64 of a 1024x1024 PNG takes ~6 ms: with n images, enough to stall other requests on the event loop.
        encoded = await asyncio.to_thread(lambda: [base64.b64encode(data).decode("ascii") for data in files])
        return [ImageData(b64_json=text, revised_prompt=revised) for text in encoded]

    @classmethod
    def _gpt_image_fields(cls, job: ImageJob, prompt_tokens: int) -> dict[str, object]:
        """DALL·E responses carry only `created` and `data`; gpt-image ones echo the resolved settings."""
        if job.api_style != "gpt-image":
            return {}
        return {
            "background": job.output.background,
            "output_format": job.output.format,
            "quality": job.quality,
            "size": str(job.size),
            "usage": cls._usage(job, prompt_tokens),
            "safety_identifier": job.safety_identifier,
        }

    @staticmethod
    def _usage(job: ImageJob, prompt_tokens: int) -> Usage:
        """The whole job's usage: the same whether it is streamed or not."""
        output_tokens = image_tokens(job.size) * job.plan.n
        input_tokens = prompt_tokens + job.input_image_tokens
        return Usage(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(text_tokens=prompt_tokens, image_tokens=job.input_image_tokens),
            output_tokens=output_tokens,
            output_tokens_details=OutputTokensDetails(text_tokens=0, image_tokens=output_tokens),
            total_tokens=input_tokens + output_tokens,
        )


@dataclass(frozen=True)
class Upload:
    """An uploaded file, undecoded, and the parameter it came in (`image`, `image[1]`, `mask`)."""

    param: str
    data: bytes
