"""Issue 13 (a lean request path) keeps behaviour: the Core identity lookup answers what the ORM
one does, a cached key needs no SQL yet a revocation takes effect at once on the revoking worker
and within the cache's TTL on every other replica, and micro-batched identify answers what the
plain one does."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.api.auth as auth
from service.api.state import VerifiedKeys
from service.gallery.hits import gallery_hits, gallery_hits_counted
from service.identities import identities_for_faces
from service.startup import wait_until_started

from .conftest import ADMIN, create_key, image_part, make_settings, started_client

STATS = "/v1/gallery/stats"


def test_the_core_lookup_answers_what_the_orm_lookup_does(
    client: TestClient, enrolled: Callable[[int], list[int]]
) -> None:
    enrolled(4)
    state = wait_until_started(client.app)  # type: ignore[arg-type]
    wanted = [
        *range(1, 6),
        10**6,
    ]  # 4 faces enrolled, ids from 1; unknown ids are absent  # an unknown id is absent from both
    hits = gallery_hits(state.engine, wanted)
    with state.session_factory() as session:
        reference = identities_for_faces(session=session, face_ids=wanted)
    assert hits and sorted(hits) == sorted(reference)
    for face_id, identity in reference.items():
        hit = hits[face_id]
        assert (hit.face_id, hit.identity_id, hit.external_id, hit.name) == (
            face_id,
            identity.id,
            identity.external_id,
            identity.name,
        )
    assert gallery_hits(state.engine, []) == {}


def test_the_counted_lookup_adds_each_identitys_vectors_in_all_spaces(
    client: TestClient, enrolled: Callable[[int], list[int]], keys: dict[str, dict[str, str]]
) -> None:
    """gallery_hits_counted (the cross-space ranking's one round trip): the same hits as
    gallery_hits, and per identity the count a naive scan of every face row gives."""
    import sqlalchemy as sa

    from service.db.models import Face

    ids = enrolled(3)
    for seed in (11, 12):  # identity 0: three faces in the old space, three native twins
        reply = client.post(
            f"/v1/identities/{ids[0]}/faces", files=[image_part(seed)], headers=keys["enrol"]
        )
        assert reply.status_code == 201, reply.text
    state = wait_until_started(client.app)  # type: ignore[arg-type]
    with state.session_factory() as session:
        faces = session.execute(sa.select(Face.id, Face.identity_id)).all()
    wanted = [faces[0][0], faces[-1][0], 10**6]
    hits, counts = gallery_hits_counted(state.engine, wanted)
    assert hits == gallery_hits(state.engine, wanted) and len(hits) == 2
    naive = {h.identity_id: sum(i == h.identity_id for _, i in faces) for h in hits.values()}
    assert counts == naive and sorted(naive.values()) != [1, 1]
    assert gallery_hits_counted(state.engine, []) == ({}, {})


def test_a_cached_key_is_verified_without_sql(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_key(client, "identify")
    calls: list[str] = []
    verify = auth.verify_key

    def counting(**kwargs):  # type: ignore[no-untyped-def]
        calls.append("sql")
        return verify(**kwargs)

    monkeypatch.setattr(auth, "verify_key", counting)
    for _ in range(3):
        assert client.get(STATS, headers=key).status_code == 200
    assert calls == ["sql"]
    # the cached record still carries its scopes: an identify key stays out of /v1/admin
    assert client.get("/v1/admin/keys", headers=key).status_code == 403


def test_a_revocation_takes_effect_at_once_here_and_within_the_ttl_on_a_replica(
    tmp_path: Path, tiny_manifest: Path
) -> None:
    settings = make_settings(tmp_path, tiny_manifest)  # both replicas: one database
    with started_client(settings) as first, started_client(settings) as second:
        replica = wait_until_started(second.app)  # type: ignore[arg-type]
        replica.verified_keys = VerifiedKeys(ttl_seconds=0.5)
        created = first.post(
            "/v1/admin/keys", json={"name": "kiosk", "scopes": ["identify"]}, headers=ADMIN
        ).json()
        key = {"X-API-Key": created["key"]}
        assert first.get(STATS, headers=key).status_code == 200
        assert second.get(STATS, headers=key).status_code == 200  # now cached there
        revoked = first.delete(f"/v1/admin/keys/{created['id']}", headers=ADMIN)
        assert revoked.status_code == 204, revoked.text
        assert first.get(STATS, headers=key).status_code == 401  # the revoking worker: at once
        time.sleep(0.6)
        assert second.get(STATS, headers=key).status_code == 401  # the replica: within the TTL


def test_micro_batched_identify_answers_what_plain_identify_does(
    tmp_path: Path, tiny_manifest: Path, transformer_files: dict[str, Path]
) -> None:
    from .conftest import upload_transformer

    answers = []
    for batched in (False, True):
        overrides = {"micro_batch_max": 4, "inference_threads": 4} if batched else {}
        settings = make_settings(tmp_path / str(batched), tiny_manifest, **overrides)
        with started_client(settings) as client:
            assert upload_transformer(client, transformer_files["a"], activate=True).is_success
            for seed in range(3):
                created = client.post(
                    "/v1/identities", json={"external_id": f"e{seed}"}, headers=ADMIN
                ).json()
                added = client.post(
                    f"/v1/identities/{created['id']}/faces",
                    files=[image_part(seed)],
                    headers=ADMIN,
                )
                assert added.status_code == 201, added.text
            reply = client.post(
                "/v1/identify", files=[image_part(s) for s in range(3)], headers=ADMIN
            )
            assert reply.status_code == 200, reply.text
            answers.append(
                [
                    [(c["external_id"], round(c["score"], 5)) for c in r["candidates"]]
                    for r in reply.json()["results"]
                ]
            )
    assert answers[0] == answers[1]
