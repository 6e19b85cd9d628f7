"""Routes under /images: generations, and the files behind `response_format="url"`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from localimg.errors import NotFoundError
from localimg.protocol import ErrorResponse, ImageGenerateRequest, ImagesResponse
from localimg.service.images import ImageService

router = APIRouter(tags=["images"], responses={400: {"model": ErrorResponse}, 500: {"model": ErrorResponse}})
FILES_PATH = "/images/files"


def service_of(request: Request) -> ImageService:
    return request.app.state.service  # type: ignore[no-any-return]


@router.post("/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(body: ImageGenerateRequest, request: Request) -> ImagesResponse:
    return await service_of(request).generate(body, url_base=files_url(request))


@router.get(FILES_PATH + "/{image_id}", responses={404: {"model": ErrorResponse}})
async def get_image_file(image_id: str, request: Request) -> Response:
    item = service_of(request).store.get(image_id)
    if item is None:
        raise NotFoundError(f"No image '{image_id}': it never existed or its URL has expired.", code="not_found")
    return Response(item.data, media_type=item.media_type, headers={"cache-control": "private, max-age=3600"})


def files_url(request: Request) -> str:
    base = request.app.state.settings.public_url or str(request.base_url)
    return f"{base.rstrip('/')}/v1{FILES_PATH}"
