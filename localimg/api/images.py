"""Routes under /images: generations, and the files behind `response_format="url"`."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from localimg.api.errors import request_id_of
from localimg.api.sse import sse_response
from localimg.errors import NotFoundError
from localimg.protocol import ErrorResponse, ImageGenerateRequest, ImagesResponse
from localimg.service.images import ImageService
from localimg.service.streaming import ImageEvent

router = APIRouter(tags=["images"], responses={400: {"model": ErrorResponse}, 500: {"model": ErrorResponse}})
FILES_PATH = "/images/files"


def _service(request: Request) -> ImageService:
    return request.app.state.service  # type: ignore[no-any-return]


@router.post("/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(body: ImageGenerateRequest, request: Request) -> ImagesResponse | StreamingResponse:
    service = _service(request)
    if body.stream:
        job = service.plan_generation(body)  # before the first byte: a bad request is still a plain HTTP 400
        return _sse(service.stream(job, "image_generation"), request)
    return await service.generate(body, url_base=_files_url(request))


@router.get(FILES_PATH + "/{image_id}", responses={404: {"model": ErrorResponse}})
async def get_image_file(image_id: str, request: Request) -> Response:
    item = _service(request).store.get(image_id)
    if item is None:
        raise NotFoundError(f"No image '{image_id}': it never existed or its URL has expired.", code="not_found")
    return Response(item.data, media_type=item.media_type, headers={"cache-control": "private, max-age=3600"})


def _sse(events: AsyncGenerator[ImageEvent, None], request: Request) -> StreamingResponse:
    keepalive_s = request.app.state.settings.sse_keepalive_s
    return sse_response(events, keepalive_s=keepalive_s, request_id=request_id_of(request))


def _files_url(request: Request) -> str:
    base = request.app.state.settings.public_url or str(request.base_url)
    return f"{base.rstrip('/')}/v1{FILES_PATH}"
