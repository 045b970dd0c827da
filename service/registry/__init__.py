"""Transformer versions (upload, validate, activate, roll back, delete) and the hot-swap holder.

One transformer, and the names it goes by on its way from the database to a request:

=========================  ========================================  ==========================
name                       what it is                                where
=========================  ========================================  ==========================
``TransformerVersion``     the DB row: the source of truth           :mod:`service.db.models`
``StoredTransformer``      the registry's frozen copy of a row, plus  :mod:`.records`
                           its file path and ``created``
``TransformerInfo``        the API schema (JSON of a version)        :mod:`service.api.schemas`
``ActiveTransformer``      the runtime object: the snapshot a        :mod:`.holder`
                           worker serves (version, generation,
                           threshold, runner), swapped atomically
``TransformerRunner``      the loaded ONNX file (ONNX Runtime        :mod:`service.inference.
                           wrapper): ``map``, ``map_gallery``        transformer`
``ActiveMapping``          one request's view of a runner: its map   :mod:`service.pipeline_types`
                           functions (wrapped with the NaN counter),
                           threshold, fusion weight, calibration
=========================  ========================================  ==========================

"session" in this code base means an SQL session; an ORT ``InferenceSession`` only lives inside
the runner. ``ActiveMapping`` is built from a runner (``ActiveMapping.from_runner``) by the app
for the active version and by the shadow evaluator for a candidate, so the pipeline sees plain
callables and never a runner or a holder.
"""
