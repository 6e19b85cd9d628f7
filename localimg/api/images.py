"""Routes under /images: generations, and the files behind `response_format="url"`."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from localimg.api.disconnect import cancel_on_disconnect
from localimg.api.errors import request_id_of
from localimg.api.sse import names_events_for, sse_response
from localimg.api.state import AppState
from localimg.errors import NotFoundError
from localimg.protocol import ErrorResponse, ImageGenerateRequest, ImagesResponse
from localimg.service.images import ImageService
from localimg.service.streaming import JobStream

router = APIRouter(tags=["images"], responses={400: {"model": ErrorResponse}, 500: {"model": ErrorResponse}})
FILES_PATH = "/images/files"


def service_of(request: Request) -> ImageService:
    return AppState.of(request.app).service


@router.post("/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(body: ImageGenerateRequest, request: Request) -> ImagesResponse | StreamingResponse:
    service = service_of(request)
    if body.stream:
        job = service.plan_generation(body)  # before the first byte: a bad request is still a plain HTTP 400
        return sse(service.stream(job, "image_generation"), request)
    return await cancel_on_disconnect(request, service.generate(body, url_base=files_url(request)))


# HEAD too: these links go to browsers, proxies and link checkers (uvicorn sends the headers without the body).
@router.head(FILES_PATH + "/{image_id}", include_in_schema=False)
@router.get(FILES_PATH + "/{image_id}", responses={404: {"model": ErrorResponse}})
async def get_image_file(image_id: str, request: Request) -> Response:
    item = await service_of(request).store.get(image_id)
    if item is None:
        raise NotFoundError(f"No image '{image_id}': it never existed or its URL has expired.", code="not_found")
    # Cached no longer than the URL lives (--url-ttl).
    max_age = max(0, int(item.expires_at - time.time()))
    return Response(item.data, media_type=item.media_type, headers={"cache-control": f"private, max-age={max_age}"})


def sse(stream: JobStream, request: Request) -> StreamingResponse:
    return sse_response(
        stream.events(),
        on_close=stream.cancel,
        keepalive_s=AppState.of(request.app).settings.sse_keepalive_s,
        request_id=request_id_of(request),
        named=names_events_for(request.headers),
    )


def files_url(request: Request) -> str:
    base = AppState.of(request.app).settings.public_url or str(request.base_url)
    return f"{base.rstrip('/')}/v1{FILES_PATH}"
