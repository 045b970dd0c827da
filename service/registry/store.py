"""Transformer versions: the registry's public functions, in one import.

The work lives in :mod:`~service.registry.upload` (receive, validate, store),
:mod:`~service.registry.activation` (activate, roll back, deactivate, delete),
:mod:`~service.registry.validation` (what a file must pass) and :mod:`~service.registry.records`
(the returned record and the read-only queries); this module only re-exports them.
"""

from __future__ import annotations

from service.registry.activation import (
    activate_transformer,
    deactivate_transformer,
    delete_transformer,
    rollback_transformer,
)
from service.registry.records import (
    BackboneFacts,
    StoredTransformer,
    backbone_facts,
    backbone_facts_of,
    get_transformer,
    list_transformers,
    version_for,
)
from service.registry.upload import upload_transformer
from service.registry.validation import (
    check_fits,
    load_transformer_runner,
    validate_stored_version,
    validate_transformer,
)

__all__ = [
    "BackboneFacts",
    "StoredTransformer",
    "activate_transformer",
    "backbone_facts",
    "backbone_facts_of",
    "check_fits",
    "deactivate_transformer",
    "delete_transformer",
    "get_transformer",
    "list_transformers",
    "load_transformer_runner",
    "rollback_transformer",
    "upload_transformer",
    "validate_stored_version",
    "validate_transformer",
    "version_for",
]
