"""The demo's service side: its FACEBRIDGE_* environment, the database, gallery, transformer
and keys (the functions behind the service's commands), and the verification of the example
probes through the real app."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from service.contracts import PairsSet
from service.errors import InvalidInput
from training.demo.state import N_EXAMPLES, DemoExample


def service_env(
    *, data_dir: Path, backbone_manifest: Path, gallery_model_id: str, synthetic: bool = False
) -> dict[str, str]:
    """The FACEBRIDGE_* environment of the demo service: embedded SQLite + local FAISS index.

    SYNTHETIC demo data are patterns, not faces: the face check is off for them."""
    return {
        "FACEBRIDGE_DATABASE_URL": f"sqlite:///{data_dir / 'facebridge.db'}",
        "FACEBRIDGE_DATA_DIR": str(data_dir),
        "FACEBRIDGE_INDEX_PATH": str(data_dir / "index" / "gallery.faiss"),
        "FACEBRIDGE_TRANSFORMERS_DIR": str(data_dir / "transformers"),
        "FACEBRIDGE_BACKBONE_MANIFEST": str(backbone_manifest),
        "FACEBRIDGE_GALLERY_MODEL_ID": gallery_model_id,
        # Demo probes are aligned 112x112 crops: no detector needed (photos need the dlib extra).
        "FACEBRIDGE_DETECTOR": "auto",
        "FACEBRIDGE_FACE_CHECK": "off" if synthetic else "auto",
        # The gallery migrates itself with the traffic (docs/service.md, progressive migration).
        "FACEBRIDGE_CAPTURE": "confident",
    }


def settings_from_env(env: dict[str, str]) -> Any:
    """ServiceSettings from a FACEBRIDGE_* mapping (the same values the served app reads)."""
    from service.settings import ServiceSettings

    prefix = "FACEBRIDGE_"
    return ServiceSettings(
        **{k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
    )


def gallery_and_probes(pairs: PairsSet) -> tuple[PairsSet, dict[str, int], list[tuple[str, str]]]:
    """Gallery rows (templates + distractors), their counts, and (name, path) probes, per
    docs/PROTOCOL.md (:func:`service.evaluation.protocol.build_gallery_and_probes` decides)."""
    from service.evaluation.protocol import build_gallery_and_probes

    split = build_gallery_and_probes(pairs)
    gallery = pairs.take(np.asarray(split.gallery_rows))
    if pairs.name is None or pairs.path is None:
        raise InvalidInput("the demo needs 'name' and 'path' columns in the pairs file")
    # One probe per person first (sorted by path), so the examples show different people.
    seen: set[str] = set()
    first, rest = [], []
    for row in sorted(np.asarray(split.probe_rows).tolist(), key=lambda r: str(pairs.path[r])):
        name, path = str(pairs.name[row]), str(pairs.path[row])
        (rest if name in seen else first).append((name, path))
        seen.add(name)
    return gallery, split.counts(), first + rest


def prepare_service(
    *, env: dict[str, str], data_dir: Path, eval_pairs: PairsSet, transformer_path: Path
) -> tuple[str, str, dict[str, int], list[tuple[str, str]]]:
    """Migrate the database, import the gallery, upload + activate the transformer and create
    an identify key and an admin key (the console's): the functions behind `facebridge db
    upgrade`, `gallery import`, `transformer upload --activate` and `keys create`."""
    from service.commands import db_upgrade, gallery_import, keys_create
    from service.registry.commands import transformer_upload

    settings = settings_from_env(env)
    gallery, counts, probes = gallery_and_probes(eval_pairs)
    gallery_file = data_dir / "gallery" / "gallery.npz"
    gallery_file.parent.mkdir(parents=True, exist_ok=True)
    assert gallery.name is not None and gallery.path is not None  # checked in gallery_and_probes
    np.savez(
        gallery_file,
        old=np.asarray(gallery.old, dtype=np.float32),
        name=gallery.name.astype(str),
        path=gallery.path.astype(str),
    )
    db_upgrade(settings=settings)
    report = gallery_import(
        path=gallery_file, settings=settings, model_id=settings.gallery_model_id
    )
    transformer_upload(
        path=transformer_path, settings=settings, activate=True, note="facebridge demo"
    )
    _, api_key = keys_create(scopes=["identify"], name="demo", settings=settings)
    _, console_key = keys_create(scopes=["admin"], name="demo console", settings=settings)
    counts["imported"] = int(report.rows)
    return api_key, console_key, counts, probes


def _first_correct(
    client: Any, *, api_key: str, candidates: list[DemoExample], wanted: int
) -> tuple[list[DemoExample], dict[str, Any]]:
    """POST every candidate to /v1/identify; keep ``wanted`` whose top-1 candidate is the right
    person, preferring those whose score also clears the decision threshold (``match`` set)."""
    correct: list[DemoExample] = []
    failures: list[str] = []
    for example in candidates:
        with open(example.image, "rb") as fh:
            response = client.post(
                "/v1/identify",
                headers={"X-API-Key": api_key},
                files={"image": (Path(example.image).name, fh, "application/octet-stream")},
            )
        if response.status_code != 200:
            failures.append(f"{example.image}: HTTP {response.status_code} {response.text[:200]}")
            continue
        result = response.json()["results"][0]
        ranked, match = result["candidates"], result["match"]
        top = ranked[0]["name"] if ranked else None
        if top == example.expected:
            matched = match is not None and match["name"] == example.expected
            correct.append(dataclasses.replace(example, verified=True, matched=matched))
        else:
            failures.append(f"{Path(example.image).name}: expected {example.expected}, got {top}")
    chosen = sorted(correct, key=lambda e: not e.matched)[:wanted]  # stable: path order kept
    stats = {
        "tried": len(candidates),
        "correct": len(correct),
        "matched": sum(e.matched for e in correct),
        "failures": failures,
    }
    return chosen, stats


def verify_examples(
    *,
    env: dict[str, str],
    api_key: str,
    candidates: list[DemoExample],
    photo_candidates: list[DemoExample],
) -> tuple[list[DemoExample], dict[str, Any]]:
    """Through the real app (in-process, lifespan on): N_EXAMPLES aligned probes must come back
    as the right person; one full photo (detection + alignment in the service) is a bonus shown
    only when it does too (it needs the dlib detector of the [detect] extra)."""
    import warnings

    with warnings.catch_warnings():  # starlette's note about httpx, printed at import
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from service.app import create_app
    from service.startup import wait_until_started

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per in-process request
    app = create_app(settings_from_env(env))
    with TestClient(app) as client:
        wait_until_started(app, timeout=600)  # the lifespan returns first; loading follows
        verified, stats = _first_correct(
            client, api_key=api_key, candidates=candidates, wanted=N_EXAMPLES
        )
        photos, photo_stats = _first_correct(
            client, api_key=api_key, candidates=photo_candidates, wanted=1
        )
    if len(verified) < N_EXAMPLES:
        raise InvalidInput(
            f"demo verification failed: only {len(verified)} of {stats['tried']} example probes "
            "came back as the right person; " + "; ".join(stats["failures"][:3])
        )
    return verified + photos, {**stats, "photo": photo_stats}
