"""``facebridge demo``: from a fresh clone to a working ``/identify`` in one command.

``demo build`` prepares ``./demo-data/`` (idempotent: a second run with the same inputs reuses
it); ``demo run`` builds, then serves it at http://127.0.0.1:8000 after printing curl commands.

- **Kit present** (``service.kit.find_kit_dir()``): real LFW faces. Gallery = OLD-model (dlib)
  vectors of the kit's ``eval`` identities, built per docs/PROTOCOL.md (first image by path per
  identity, 1-image identities as distractors); backbone = the kit's MobileFaceNet (read in
  place, never copied); transformer fitted on the ``bridge`` split, exported, uploaded and
  activated. Example probes are real aligned eval images of people in the gallery.
  The service flip-averages its queries by default (``FACEBRIDGE_FLIP_AVERAGE_QUERIES``), so the
  demo scores the same way: it adds ``new_flip`` (every kit crop mirrored and embedded,
  :mod:`training.data.flip`) to its copy of the pairs, and the threshold (bridge rows) and the
  eval metrics come from flip-averaged queries. The mirrored embeddings are cached in
  ``<data-dir>/cache/`` (kept by rebuilds): only the first build spends those minutes.
- **No kit** (or ``--synthetic``): a SYNTHETIC data set generated here (coloured-pattern 112x112
  "faces", one pattern family per synthetic person), two randomly initialised iResNet backbones
  standing in for the old and the new model, then the same real pipeline: pairs extraction (with
  ``new_flip``, its default), transformer fit + export, gallery import, upload + activation,
  service.

Before printing anything the demo verifies in-process (the real app, the real HTTP route) that
its example probes come back as the right person. It never downloads anything.
Torch is imported inside the commands only.

Modules: :mod:`.state` (what a build leaves behind), :mod:`.synthetic` (the stand-in data),
:mod:`.fitting` (fit, evaluate, new_flip), :mod:`.service_side` (database, gallery, keys, the
verification), :mod:`.build` (the steps in order), :mod:`.cli` (the commands).
"""
