"""Issue 11 (hardening), races on SQLite AND PostgreSQL: the same face enrolled twice at once
(201 + 409), two imports sharing external ids (the second waits, both succeed), activation and
deletion of one version at once (the registry stays consistent, no 500)."""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa
from svc_helpers import (
    NEW_DIM,
    OLD_DIM,
    make_transformer_onnx,
    unit_vectors,
)

from service.db.models import Face, Identity, TransformerVersion
from service.db.registry_state import registry_state
from service.errors import Conflict, ContractError, NotFound
from service.gallery.importer import import_gallery
from service.identities import add_faces, create_identity
from service.registry.store import (
    activate_transformer,
    delete_transformer,
    upload_transformer,
)
from tests.concurrency import at_once

ROUNDS = 20


def test_the_same_face_enrolled_twice_at_once_is_one_201_and_one_409(env) -> None:
    env.with_settings(gallery_dim=OLD_DIM)
    vectors = unit_vectors(ROUNDS, OLD_DIM, seed=7)
    for round_ in range(ROUNDS):
        with env.session() as session:
            person = create_identity(session=session, name=f"p{round_}")

        def enrol(vector: np.ndarray = vectors[round_], identity_id: int = person.id) -> Any:
            with env.session() as session:
                return add_faces(
                    session=session,
                    index=None,
                    identity_id=identity_id,
                    vectors=vector[None, :],
                    source="legacy",
                    settings=env.settings,
                )

        outcomes = at_once(enrol, enrol)
        stored = [o for o in outcomes if isinstance(o, list)]
        refused = [o for o in outcomes if isinstance(o, Conflict)]
        assert len(stored) == 1 and len(refused) == 1, f"round {round_}: {outcomes!r}"
    with env.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Face)) == ROUNDS


def test_two_imports_sharing_external_ids_both_succeed(env, tmp_path) -> None:
    env.with_settings(gallery_dim=OLD_DIM)
    rows = 600
    files = []
    for i, first in enumerate((0, rows // 2)):  # the second file shares half of its ids
        path = tmp_path / f"import-{i}.npz"
        names = np.asarray([f"person-{k}" for k in range(first, first + rows)])
        np.savez(path, old=unit_vectors(rows, OLD_DIM, seed=100 + i), external_id=names)
        files.append(path)
    for round_ in range(3):
        with env.session() as session:  # start empty each round
            session.execute(sa.delete(Identity))
            session.commit()

        def run(path=None) -> Any:  # type: ignore[no-untyped-def]
            return import_gallery(
                session_factory=env.session_factory, source=path, settings=env.settings
            )

        first, second = at_once(lambda: run(files[0]), lambda: run(files[1]))
        assert not isinstance(first, BaseException), f"round {round_}: {first!r}"
        assert not isinstance(second, BaseException), f"round {round_}: {second!r}"
        assert first.identities_created + second.identities_created == rows + rows // 2
        with env.session() as session:
            identities = session.scalar(sa.select(sa.func.count()).select_from(Identity))
            faces = session.scalar(sa.select(sa.func.count()).select_from(Face))
        assert (identities, faces) == (rows + rows // 2, 2 * rows)


def test_activating_and_deleting_one_version_at_once_keeps_the_registry_consistent(
    configured,
) -> None:
    env = configured

    def upload(seed: int) -> str:
        data = make_transformer_onnx(input_dim=NEW_DIM, seed=seed)
        info = upload_transformer(
            session_factory=env.session_factory, settings=env.settings, data=data
        )
        return info.version

    base = upload(1000)
    activate_transformer(session_factory=env.session_factory, settings=env.settings, version=base)
    unexpected: list[BaseException] = []
    for round_ in range(ROUNDS):
        version = upload(round_)
        outcomes = at_once(
            lambda v=version: activate_transformer(
                session_factory=env.session_factory, settings=env.settings, version=v
            ),
            lambda v=version: delete_transformer(
                session_factory=env.session_factory, settings=env.settings, version=v
            ),
        )
        unexpected += [
            o
            for o in outcomes
            if isinstance(o, BaseException)
            and not isinstance(o, Conflict | NotFound | ContractError)
        ]
        with env.session() as session:
            active = session.scalars(
                sa.select(TransformerVersion.version).where(TransformerVersion.state == "active")
            ).all()
            state = registry_state(session=session)
        assert len(active) == 1, f"round {round_}: no active transformer ({outcomes!r})"
        assert state.active_version == active[0], f"round {round_}: {state} vs {active}"
        if active[0] != version:  # back to the base version for the next round
            assert active[0] in (base, version)
        else:
            activate_transformer(
                session_factory=env.session_factory, settings=env.settings, version=base
            )
    assert unexpected == []
