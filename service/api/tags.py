"""The OpenAPI document's tags, in the order the routers are listed."""

OPENAPI_TAGS = [
    {"name": "identify", "description": "Identify and verify faces against the gallery."},
    {"name": "identities", "description": "People and their enrolled faces."},
    {"name": "gallery", "description": "Bulk import of legacy vectors; gallery statistics."},
    {
        "name": "admin",
        "description": "Transformer versions, shadow evaluation, the audit history and API keys "
        "(admin scope).",
    },
    {
        "name": "migration",
        "description": "Progressive migration: spaces, coverage, captures; undo (admin scope).",
    },
    {"name": "health", "description": "Liveness, readiness, Prometheus metrics."},
]
