"""API keys (hashing, scopes, revocation, bootstrap) and identity CRUD."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import select
from svc_helpers import unit_vectors

from service.db.models import ApiKey
from service.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from service.gallery.engines.faiss import FaissStore
from service.gallery.face_reads import face_vectors
from service.identities import (
    UNSET,
    add_face,
    add_faces,
    create_identity,
    delete_face,
    delete_identity,
    get_identity,
    identities_for_faces,
    list_faces,
    list_identities,
    update_identity,
)
from service.keys import bootstrap_admin_key, create_key, list_keys, revoke_key, verify_key
from service.settings import ServiceSettings


def test_keys_are_stored_hashed_and_checked_by_scope(sqlite_env):
    with sqlite_env.session() as session:
        info, plaintext = create_key(session=session, scopes=["identify"], name="kiosk")
        row = session.scalars(select(ApiKey)).one()
        assert plaintext not in (row.key_hash, row.prefix) and plaintext.startswith(row.prefix)
        assert row.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
        assert verify_key(session=session, key=plaintext, scope="identify").id == info.id
        with pytest.raises(Forbidden):
            verify_key(session=session, key=plaintext, scope="enrol")
        for bad in (None, "", plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"), "x" * 9999):
            with pytest.raises(Unauthorized):
                verify_key(session=session, key=bad, scope="identify")
        _, admin_key = create_key(session=session, scopes=["admin"])
        for scope in ("identify", "enrol", "admin"):  # admin implies every scope
            verify_key(session=session, key=admin_key, scope=scope)
        revoke_key(session=session, key_id=info.id)
        with pytest.raises(Unauthorized):
            verify_key(session=session, key=plaintext, scope="identify")
        assert [k.revoked for k in list_keys(session=session)] == [True, False]
        assert list_keys(session=session)[1].last_used_at is not None
        with pytest.raises(InvalidInput):
            create_key(session=session, scopes=["superuser"])
        with pytest.raises(NotFound):
            revoke_key(session=session, key_id=999)


def test_bootstrap_admin_key_is_idempotent_and_rotates(sqlite_env):
    first = sqlite_env.settings.model_copy(
        update={"admin_key": SecretStr("k" * 8 + "-first-bootstrap")}
    )
    second = sqlite_env.settings.model_copy(
        update={"admin_key": SecretStr("k" * 8 + "-second-bootstrap")}
    )
    with sqlite_env.session() as session:
        assert bootstrap_admin_key(session=session, settings=sqlite_env.settings) is None
        a = bootstrap_admin_key(session=session, settings=first)
        assert bootstrap_admin_key(session=session, settings=first).id == a.id
        key = first.admin_key.get_secret_value()
        assert verify_key(session=session, key=key, scope="admin").id == a.id
        bootstrap_admin_key(session=session, settings=second)
        with pytest.raises(Unauthorized):  # the replaced env key stops working
            verify_key(session=session, key=key, scope="admin")
        verify_key(session=session, key=second.admin_key.get_secret_value(), scope="admin")


@pytest.mark.parametrize("value", ["changeme", "CHANGEME", "password", "short-key"])
def test_settings_refuse_placeholder_secrets(value, monkeypatch):
    monkeypatch.setenv("FACEBRIDGE_ADMIN_KEY", value)
    with pytest.raises(ValidationError):
        ServiceSettings()
    monkeypatch.delenv("FACEBRIDGE_ADMIN_KEY")
    monkeypatch.setenv("FACEBRIDGE_DATABASE_URL", "postgresql+psycopg://fb:changeme@db/fb")
    with pytest.raises(ValidationError):
        ServiceSettings()


def test_multi_face_enrolment_is_all_or_nothing(env):
    index = FaissStore(dim=None)
    fresh = unit_vectors(3, 8, seed=7)
    with env.session() as session:
        ada = create_identity(session=session, name="Ada Lovelace", external_id="emp-1")
        with pytest.raises(Conflict):  # one repeated vector: none of the three is stored
            add_faces(
                session=session,
                index=index,
                identity_id=ada.id,
                vectors=np.stack([fresh[0], fresh[1], fresh[0]]),
                source="legacy",
            )
        assert list_faces(session=session, identity_id=ada.id) == [] and index.ntotal == 0
        both = add_faces(
            session=session, index=index, identity_id=ada.id, vectors=fresh[:2], source="legacy"
        )
        assert len(both) == 2 and index.ids() == {f.id for f in both}


def _create_and_list_identities(session):
    """Three identities (external ids unique), listed by page, name and external id."""
    ada = create_identity(session=session, name="Ada Lovelace", external_id="emp-1")
    create_identity(session=session, name="Alan Turing", external_id="emp-2")
    create_identity(session=session, name="Grace 100% Hopper")
    with pytest.raises(Conflict):
        create_identity(session=session, name="dup", external_id="emp-1")
    page = list_identities(session=session, limit=2, offset=0)
    assert page.total == 3 and [i.name for i in page.items] == ["Ada Lovelace", "Alan Turing"]
    assert list_identities(session=session, name="LOVE").items[0].id == ada.id
    assert list_identities(session=session, name="100%").total == 1  # LIKE wildcards escaped
    assert list_identities(session=session, external_id="emp-2").total == 1
    with pytest.raises(InvalidInput):
        list_identities(session=session, limit=0)
    return ada


def _update_identity(session, identity_id: int) -> None:
    """Rename, set metadata, and set / clear the external id (unique)."""
    updated = update_identity(
        session=session, identity_id=identity_id, name="Ada King", metadata={"team": "math"}
    )
    assert (updated.name, updated.external_id, updated.metadata) == (
        "Ada King",
        "emp-1",
        {"team": "math"},
    )
    with pytest.raises(Conflict):
        update_identity(session=session, identity_id=identity_id, external_id="emp-2")
    assert (
        update_identity(session=session, identity_id=identity_id, external_id=None).external_id
        is None
    )
    assert UNSET is not None


def test_identity_crud_and_faces(env):
    index = FaissStore(dim=None)
    with env.session() as session:
        ada = _create_and_list_identities(session)
        _update_identity(session, ada.id)

        v = unit_vectors(2, 8)
        f1 = add_face(
            session=session, index=index, identity_id=ada.id, vector=v[0], transformer_version="t-1"
        )
        f2 = add_face(
            session=session, index=index, identity_id=ada.id, vector=v[1], source="legacy"
        )
        with pytest.raises(Conflict):  # the same vector twice
            add_face(
                session=session, index=index, identity_id=ada.id, vector=v[0] * 2, source="legacy"
            )
        with pytest.raises(InvalidInput):  # a mapped face names its transformer version
            add_face(session=session, index=index, identity_id=ada.id, vector=v[1], source="mapped")
        with pytest.raises(InvalidInput):  # another dimension than the gallery's
            add_face(
                session=session,
                index=index,
                identity_id=ada.id,
                vector=unit_vectors(1, 4)[0],
                source="legacy",
            )
        assert [f.source for f in list_faces(session=session, identity_id=ada.id)] == [
            "mapped",
            "legacy",
        ]
        assert get_identity(session=session, identity_id=ada.id).face_count == 2
        assert (
            identities_for_faces(session=session, face_ids=[f1.id, f2.id, 10**6])[f1.id].id
            == ada.id
        )
        assert index.ids() == {f1.id, f2.id}
        ids, vectors = face_vectors(session=session, identity_id=ada.id)
        assert ids.tolist() == [f1.id, f2.id] and np.allclose(vectors, v, atol=1e-6)

        with pytest.raises(NotFound):
            delete_face(session=session, index=index, identity_id=ada.id + 99, face_id=f1.id)
        delete_face(session=session, index=index, identity_id=ada.id, face_id=f1.id)
        with pytest.raises(NotFound):
            delete_face(session=session, index=index, identity_id=ada.id, face_id=f1.id)
        assert delete_identity(session=session, index=index, identity_id=ada.id) == 1
        assert index.ntotal == 0
        for call in (
            lambda: get_identity(session=session, identity_id=ada.id),
            lambda: update_identity(session=session, identity_id=ada.id, name="x"),
            lambda: delete_identity(session=session, index=index, identity_id=ada.id),
            lambda: add_face(
                session=session, index=index, identity_id=ada.id, vector=v[0], source="legacy"
            ),
        ):
            with pytest.raises(NotFound):
                call()
