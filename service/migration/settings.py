"""Settings of the progressive migration (env prefix ``FACEBRIDGE_``): the capture rule.

:class:`service.settings.ServiceSettings` inherits them, so they are documented with the others
in docs/configuration.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

CaptureMode = Literal["off", "confident"]


class MigrationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEBRIDGE_", extra="ignore", frozen=True)

    capture: CaptureMode = Field(
        default="off",
        description=(
            "Capture from identify: `confident` keeps the query's native vector for the top-1 "
            "identity when the capture rule holds (service.migration.capture; a request may "
            "opt out with capture=false); `off` never captures. The demo turns it on."
        ),
    )
    capture_fpir: float = Field(
        default=0.003,
        gt=0.0,
        lt=0.1,
        description=(
            "The capture rule's modelled FPIR at the live gallery size (strength x margin: the "
            "strength test runs at capture_fpir x 10^capture_margin_decades, the margin test "
            "passes a stranger with probability 10^-capture_margin_decades). Kit: 0.13% false "
            "captures measured (README)."
        ),
    )
    capture_margin_decades: float = Field(
        default=1.5,
        ge=0.0,
        le=6.0,
        description=(
            "Capture margin: the second identity's fused FAR must be at least this many "
            "decades (powers of ten) worse than the top-1's."
        ),
    )
    capture_max_native: int = Field(
        default=8,
        ge=1,
        le=1000,
        description=(
            "Captured native vectors kept per identity; a full identity replaces its most "
            "redundant captured vector (highest cosine to its other native vectors)."
        ),
    )
