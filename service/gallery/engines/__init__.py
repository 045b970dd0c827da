"""Vector-store engines: ``faiss`` (embedded, the default) and ``milvus`` (Lite / standalone /
cluster). See :mod:`service.gallery.engines.base` for the interface."""
