"""What the operator console needs beyond the public API: who the caller's key is (so the
console shows only the pages its scopes allow; the API still refuses the rest) and the aligned
face crop an image gives (the console's "Try it" page shows what the backbone sees)."""

from __future__ import annotations

import base64
import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, UploadFile

from service.api.deps import CallerKey, IdentifyScope, MultipartBody, StateDep
from service.api.rollout_schemas import DetectedFace, DetectResponse, WhoAmI
from service.api.schemas import problem_responses
from service.api.uploads import read_images
from service.inference.faces import FaceCrop
from service.pipeline import ImageUpload, Pipeline

router = APIRouter(prefix="/v1", tags=["identify"])
MAX_FACES_SHOWN = 10


@router.get(
    "/whoami",
    operation_id="whoami",
    summary="The caller's API key: id, name, scopes",
    response_model=WhoAmI,
    responses=problem_responses(),
)
async def whoami(key: CallerKey) -> WhoAmI:
    """Any valid key may ask; never returns the secret."""
    return WhoAmI(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=list(key.scopes),
        admin="admin" in key.scopes,
    )


def _png_data_url(crop: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _face(index: int, found: FaceCrop) -> DetectedFace:
    face = found.face
    return DetectedFace(
        box=None if face is None else [float(v) for v in face.box],
        score=None if face is None else float(face.score),
        crop=_png_data_url(found.crop),
        used_by_identify=index == 0,
    )


@router.post(
    "/faces/detect",
    operation_id="detectFaces",
    summary="The aligned face crops an image gives (what identify embeds)",
    response_model=DetectResponse,
    responses=problem_responses(403, 413, 415, 422, 503),
)
async def detect_faces(
    state: StateDep,
    _auth: IdentifyScope,
    _multipart: MultipartBody,
    image: Annotated[UploadFile, File(description="one image (aligned crop or photo)")],
) -> DetectResponse:
    """Detection and alignment exactly as identify runs them; the first face is the one
    identify uses. Nothing is stored."""
    (upload,) = await read_images([image], max_images=1)
    return await state.pool.run(_detect, pipeline=state.pipeline, upload=upload)


def _detect(*, pipeline: Pipeline, upload: ImageUpload) -> DetectResponse:
    (width, height), crops = pipeline.detect(image=upload)
    return DetectResponse(
        width=width,
        height=height,
        aligned_input=bool(crops) and crops[0].face is None,
        faces=[_face(i, found) for i, found in enumerate(crops[:MAX_FACES_SHOWN])],
    )
