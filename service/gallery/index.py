"""Moved to :mod:`service.gallery.engines.faiss` (the embedded engine of the vector-store
interface); these names stay importable for code written against the old module."""

from service.gallery.engines.base import Hits
from service.gallery.engines.faiss import FaissStore, sidecar_path
from service.gallery.engines.faiss_build import INDEX_TYPES, IndexParams, ids_checksum

GalleryIndex = FaissStore

__all__ = ["INDEX_TYPES", "GalleryIndex", "Hits", "IndexParams", "ids_checksum", "sidecar_path"]
