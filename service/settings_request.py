"""Settings of the identify request path's costs: the crop face check's resolution and
micro-batching of concurrent requests. A base of :class:`service.settings.ServiceSettings`
(same env prefix); nothing runs at import."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

FaceCheck = Literal["auto", "dlib", "off"]
FACE_CHECK_UPSCALE = 1.157  # ~2 * (5/6)**3: 130 px crops; see service.inference.facecheck


class RequestPathSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEBRIDGE_", extra="ignore", frozen=True)

    face_check: FaceCheck = Field(
        default="auto",
        description="Check that a 112x112 upload (taken as an aligned crop, so not detected) "
        "shows a face: `dlib` (HOG detector on the crop; needs the detect extra), `off`, or "
        "`auto` (dlib when installed, else off with a warning at start). Refused crops get the "
        "`no-face` problem.",
    )
    face_check_upscale: float = Field(
        default=FACE_CHECK_UPSCALE,
        ge=1.0,
        le=3.0,
        description="Resolution of the crop face check: the 112x112 crop is upscaled by this "
        "before dlib's HOG detector (80 px window) scans it. The cost grows with its square: "
        "1.157 (~2.4 ms per crop on one core) finds faces down to 0.62 of the crop's width "
        "(aligned faces are wider), 1.389 (~4 ms) down to 0.51, 2.0 (~7 ms) down to 0.36. "
        "`bench/facecheck.py --upscale X` measures acceptance and refusal (1.157: 99.93% of "
        "the kit's aligned crops accepted, 100% of 1,500 non-faces refused).",
    )
    micro_batch_max: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Micro-batching: concurrent requests' crops merged into one backbone call "
        "of at most this many images; 1 = off (the default: on CPU a larger batch is no faster "
        "per image). Pays on a GPU; give it `FACEBRIDGE_INFERENCE_THREADS` >= this.",
    )
    micro_batch_wait_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=100.0,
        description="Micro-batching: how long the first request of a batch waits for others "
        "(ms); the added latency at low load.",
    )
