"""Enrolment through the service stores both vectors of each image: the mapped old-space one
(searchable with the legacy gallery) and the backbone's native one (its own space), in one
transaction with their change-log entries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from service.identities import FaceInfo, add_faces

if TYPE_CHECKING:
    from service.gallery.sync import GallerySync
    from service.settings import ServiceSettings


def enrol_both(
    *,
    session: Session,
    gallery: GallerySync,
    identity_id: int,
    mapped: np.ndarray,
    native: np.ndarray,
    native_space: str,
    transformer_version: str,
    settings: ServiceSettings,
) -> list[FaceInfo]:
    """Store ``mapped`` [n, d_old] (source ``mapped``) and ``native`` [n, d_new] (source
    ``native``, space ``native_space``) for one identity: all or nothing. Returns the mapped
    faces; this process's stores learn of both from the change log at once."""
    faces = add_faces(
        session=session,
        index=None,
        identity_id=identity_id,
        vectors=mapped,
        source="mapped",
        transformer_version=transformer_version,
        settings=settings,
        commit=False,
    )
    add_faces(
        session=session,
        index=None,
        identity_id=identity_id,
        vectors=native,
        source="native",
        transformer_version=transformer_version,
        settings=settings,
        space=native_space,
    )
    gallery.refresh()
    return faces
