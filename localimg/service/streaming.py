"""One job as a stream of wire events: partial images while it denoises, then each completed image.

The engine runs the job on its worker thread; the step callback (on that thread) decodes the previews a client
asked for and hands them to the event loop through an asyncio.Queue; the loop encodes them off-thread and yields
events. Order with n > 1: image 0's partials, image 0's completed event, image 1's partials, ... The images of a
job are denoised together, so the partials of images 1..n-1 are held back until the completed events of the
images before them have been sent (their completed images exist only when the whole job has finished).

`usage`: each completed event carries its own image's output tokens; the prompt's input tokens are counted once,
on the first completed event. The n events therefore add up to the non-streaming response's `usage`.

Cancelling the consuming task (the client went away) cancels the engine job, which stops at its next step.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from localimg.imaging.encoding import encode_image
from localimg.protocol import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenerationCompletedEvent,
    ImageGenerationPartialImageEvent,
    InputTokensDetails,
    OutputTokensDetails,
    Usage,
)
from localimg.service.planning import MAX_PARTIAL_IMAGES, ImageJob

if TYPE_CHECKING:
    from PIL import Image

    from localimg.backends.base import StepProgress
    from localimg.service.engine import Engine, GenerationResult

log = logging.getLogger(__name__)

EventPrefix = Literal["image_generation", "image_edit"]
ImageEvent = (
    ImageGenerationPartialImageEvent
    | ImageGenerationCompletedEvent
    | ImageEditPartialImageEvent
    | ImageEditCompletedEvent
)
_PARTIAL = {"image_generation": ImageGenerationPartialImageEvent, "image_edit": ImageEditPartialImageEvent}
_COMPLETED = {"image_generation": ImageGenerationCompletedEvent, "image_edit": ImageEditCompletedEvent}


def preview_steps(steps: int, partial_images: int) -> tuple[int, ...]:
    """The 1-based steps after which previews are shown: `partial_images` of them, evenly spaced over `steps`,
    never the last step (the final image follows it). Fewer when the job has too few steps."""
    if not 0 <= partial_images <= MAX_PARTIAL_IMAGES:
        raise ValueError(f"partial_images must be 0-{MAX_PARTIAL_IMAGES}, got {partial_images}")
    chosen = ((i + 1) * steps // (partial_images + 1) for i in range(partial_images))
    return tuple(sorted({step for step in chosen if 1 <= step < steps}))


def split_usage(usage: Usage, n: int) -> list[Usage]:
    """`usage` of a whole job as n per-image parts that add up to it: input tokens on the first, output tokens
    shared out (any remainder on the first images)."""
    parts = []
    for i in range(n):
        text_in = usage.input_tokens_details.text_tokens if i == 0 else 0
        image_in = usage.input_tokens_details.image_tokens if i == 0 else 0
        out_text = _share(usage.output_tokens_details.text_tokens, n, i)
        out_image = _share(usage.output_tokens_details.image_tokens, n, i)
        input_tokens = usage.input_tokens if i == 0 else 0
        output_tokens = _share(usage.output_tokens, n, i)
        parts.append(
            Usage(
                input_tokens=input_tokens,
                input_tokens_details=InputTokensDetails(text_tokens=text_in, image_tokens=image_in),
                output_tokens=output_tokens,
                output_tokens_details=OutputTokensDetails(text_tokens=out_text, image_tokens=out_image),
                total_tokens=input_tokens + output_tokens,
            )
        )
    return parts


def _share(total: int, n: int, i: int) -> int:
    return total // n + (1 if i < total % n else 0)


@dataclass(frozen=True)
class _Preview:
    image_index: int  # which of the job's images, 0-based
    image: Image.Image


class JobStream:
    """Streams one resolved `ImageJob` through the engine. The job is submitted when the stream is made, so that
    a refusal (queue full, shutting down) is raised before any byte of a response; `events` is then iterated
    once, and `cancel` drops the job when the events are never read (the client left before the first byte)."""

    def __init__(
        self,
        engine: Engine,
        job: ImageJob,
        prefix: EventPrefix,
        *,
        usage_prompt: str,
        usage: Callable[[int], Usage],
        finish: Callable[[Image.Image], Image.Image],
        clock: Callable[[], float],
    ) -> None:
        if job.stream is None:
            raise ValueError("the job was not planned for streaming")
        self._job = job
        self._options = job.stream
        self._prefix = prefix
        self._usage = usage  # prompt tokens -> the whole job's usage, as in the non-streaming response
        self._finish = finish  # what the final files get (kept region, matting); previews get it too
        self._clock = clock
        self._abandoned = False
        loop = asyncio.get_running_loop()
        self._previews: asyncio.Queue[_Preview | None] = asyncio.Queue()
        on_step = self._step_callback(lambda item: loop.call_soon_threadsafe(self._previews.put_nowait, item))
        # `usage_prompt`: the client's prompt, whose tokens `usage` gets.
        self._result = engine.submit(job.plan, on_step, usage_prompt=usage_prompt)
        self._result.add_done_callback(lambda _: self._previews.put_nowait(None))

    def cancel(self) -> None:
        """Drop the job unless it has finished; idempotent."""
        if self._result.done():
            if not self._result.cancelled():
                self._result.exception()  # an error no event reached must not be logged as "never retrieved"
        elif not self._abandoned:
            self._abandoned = True
            log.info("stream of %s abandoned; cancelling its job at the next step", self._job.plan.model)
            self._result.cancel()

    async def events(self) -> AsyncGenerator[ImageEvent, None]:
        """Partial and completed events in order; domain errors from the engine propagate."""
        held: dict[int, list[_Preview]] = {}  # partials of images whose turn has not come
        sent = [0] * self._job.plan.n  # partials sent per image
        try:
            while (item := await self._previews.get()) is not None:
                if item.image_index == 0:
                    yield await self._partial(item, sent)
                else:
                    held.setdefault(item.image_index, []).append(item)
            result = self._result.result()
            for index, image in enumerate(result.images):
                for item in held.pop(index, []):
                    yield await self._partial(item, sent)
                yield await self._completed(index, image, result)
        finally:
            self.cancel()

    def _step_callback(self, publish: Callable[[_Preview], None]) -> Callable[[StepProgress], None]:
        """Runs on the worker thread: decodes the previews due after this step and publishes them."""
        count = self._options.partial_images
        plan_n = self._job.plan.n

        def on_step(progress: StepProgress) -> None:
            if count == 0 or progress.step not in preview_steps(progress.steps, count):
                return
            for index, image in zip(progress.images, progress.preview(), strict=True):
                if 0 <= index < plan_n:
                    publish(_Preview(index, image))

        return on_step

    async def _partial(self, item: _Preview, sent: list[int]) -> ImageEvent:
        index = sent[item.image_index]
        sent[item.image_index] += 1
        data = await self._encode(item.image)
        return _PARTIAL[self._prefix](partial_image_index=index, **self._fields(data))

    async def _completed(self, index: int, image: Image.Image, result: GenerationResult) -> ImageEvent:
        data = await self._encode(image)
        usage = split_usage(self._usage(result.prompt_tokens), len(result.images))[index]
        return _COMPLETED[self._prefix](
            usage=usage, safety_identifier=self._job.safety_identifier, **self._fields(data)
        )

    async def _encode(self, image: Image.Image) -> str:
        output = self._job.output

        # Finishing, encoding and base64 of a large PNG take tens of milliseconds: keep them off the event loop.
        def encode() -> str:
            data = encode_image(self._finish(image), output.format, output.compression)
            return base64.b64encode(data).decode("ascii")

        return await asyncio.to_thread(encode)

    def _fields(self, b64_json: str) -> dict[str, object]:
        options = self._options
        return {
            "b64_json": b64_json,
            "created_at": int(self._clock()),
            "size": options.size,
            "quality": options.quality,
            "background": options.background,
            "output_format": self._job.output.format,
        }
