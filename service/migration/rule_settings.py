"""The capture rule of the settings (one place for the mapping settings -> rule)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from service.migration.capture import CaptureRule
from service.migration.settings import MigrationSettings

if TYPE_CHECKING:
    from service.gallery.sync import GallerySync
    from service.migration.live import CountedLookupFn, LiveMigration


def capture_rule_from_settings(settings: MigrationSettings | None = None) -> CaptureRule:
    settings = settings or MigrationSettings()
    return CaptureRule(
        fpir=settings.capture_fpir,
        margin_decades=settings.capture_margin_decades,
        max_native=settings.capture_max_native,
    )


def live_migration(
    *,
    settings: MigrationSettings,
    gallery: GallerySync,
    session_factory: sessionmaker[Session],
    lookup: CountedLookupFn,
    native_space: str | None,
    on_capture: Callable[[int], None] | None = None,
) -> LiveMigration | None:
    """The pipeline's cross-space ranking + capture (None without a backbone)."""
    from service.migration.live import LiveMigration

    if native_space is None:
        return None
    return LiveMigration(
        gallery=gallery,
        session_factory=session_factory,
        lookup=lookup,
        native_space=native_space,
        rule=capture_rule_from_settings(settings),
        capture=settings.capture == "confident",
        on_capture=on_capture,
    )
