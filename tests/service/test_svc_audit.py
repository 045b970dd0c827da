"""The audit history and rollback as a stack, on SQLite and Postgres.

Before migration 0003 three rollbacks in a row flip-flopped between the last two versions
(registry_state.previous_version was a single slot) and nothing recorded who switched what."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from svc_helpers import make_transformer_onnx
from test_svc_registry import upload

from service.db.registry_state import registry_state
from service.db.session import upgrade_database
from service.errors import Conflict
from service.keys import create_key, revoke_key
from service.registry import audit
from service.registry.audit import Actor, list_events, replay_stack, rollback_stack
from service.registry.store import (
    activate_transformer,
    deactivate_transformer,
    delete_transformer,
    rollback_transformer,
)

OPS = Actor.for_key(key_id=7, name="ops")


def _versions(env, n: int) -> list[str]:
    return [upload(env, make_transformer_onnx(seed=seed)).version for seed in range(1, n + 1)]


def _activate(env, version: str, **kw) -> None:
    activate_transformer(
        session_factory=env.session_factory, settings=env.settings, version=version, **kw
    )


def _rollback(env, **kw) -> str:
    return rollback_transformer(
        session_factory=env.session_factory, settings=env.settings, **kw
    ).version


def test_three_rollbacks_walk_the_history_then_409(configured):
    a, b, c, d = _versions(configured, 4)
    for version in (a, b, c, d):
        _activate(configured, version)
    # The old single-slot memory gave c, d, c: a toggle between the last two.
    assert [_rollback(configured) for _ in range(3)] == [c, b, a]
    with pytest.raises(Conflict, match="nothing older"):
        _rollback(configured)
    with configured.session() as session:
        assert registry_state(session=session).active_version == a
        assert registry_state(session=session).previous_version is None


def test_activating_after_a_rollback_pushes_the_current_version(configured):
    a, b, c = _versions(configured, 3)
    for version in (a, b, c):
        _activate(configured, version)
    assert _rollback(configured) == b  # c is dropped from the history (an undo, not a redo)
    _activate(configured, c)  # explicit re-activation pushes b
    assert [_rollback(configured), _rollback(configured)] == [b, a]


def test_delete_leaves_the_history_and_rollback_skips_it(configured):
    a, b, c = _versions(configured, 3)
    for version in (a, b, c):
        _activate(configured, version)
    delete_transformer(
        session_factory=configured.session_factory, settings=configured.settings, version=b
    )
    assert _rollback(configured) == a
    with pytest.raises(Conflict):
        _rollback(configured)


def test_every_change_is_recorded_with_who_when_from_to_and_why(configured):
    a, b = _versions(configured, 2)
    _activate(configured, a, actor=OPS, reason="first version")
    _activate(configured, b, actor=OPS, reason="better on shadow")
    _rollback(configured, actor=OPS, reason="complaints")
    deactivate_transformer(
        session_factory=configured.session_factory, settings=configured.settings, actor=OPS
    )
    delete_transformer(
        session_factory=configured.session_factory,
        settings=configured.settings,
        version=b,
        actor=OPS,
        reason="superseded",
    )
    with configured.session() as session:
        info, _ = create_key(session=session, scopes=["identify"], name="kiosk", actor=OPS)
        revoke_key(session=session, key_id=info.id, actor=OPS, reason="kiosk retired")
        events, total = list_events(session=session, limit=100)
    assert total == len(events)
    rows = [(e.action, e.subject, e.from_value, e.to_value, e.reason) for e in reversed(events)]
    assert rows == [
        ("upload", a, None, a, None),  # uploads came from the CLI helper: the local actor
        ("upload", b, None, b, None),
        ("activate", a, None, a, "first version"),
        ("activate", b, a, b, "better on shadow"),
        ("rollback", a, b, a, "complaints"),
        ("deactivate", a, a, None, None),
        ("delete", b, b, None, "superseded"),
        ("key-create", f"key {info.id} (kiosk) {info.prefix}", None, "identify", None),
        (
            "key-revoke",
            f"key {info.id} (kiosk) {info.prefix}",
            "active",
            "revoked",
            "kiosk retired",
        ),
    ]
    assert [e.actor_key_id for e in reversed(events)][2:] == [7] * 7
    assert all(e.actor == "key 7 (ops)" for e in events if e.actor_key_id == 7)
    assert all(e.at.tzinfo is not None for e in events)
    with configured.session() as session:
        only, count = list_events(session=session, action="activate")
    assert count == 2 and {e.to_value for e in only} == {a, b}
    # After the deactivation the stack holds a: a rollback re-activates it.
    with configured.session() as session:
        assert rollback_stack(session) == [a]


def test_replay_stack_matches_a_naive_simulation():
    """The stack replay against a step-by-step simulation of random histories."""
    import random

    rng = random.Random(3)
    for _ in range(200):
        versions = [f"v{i}" for i in range(5)]
        active, naive, events = None, [], []
        for _ in range(rng.randint(1, 25)):
            move = rng.choice(["activate", "activate", "rollback", "delete"])
            if move == "activate":
                target = rng.choice(versions) if versions else active
                if target == active:
                    continue
                events.append(("activate", target, active, target))
                if active is not None:
                    naive.append(active)
                active = target
            elif move == "rollback":
                candidates = [v for v in naive if v != active]
                if not candidates:
                    continue
                target = candidates[-1]
                while naive.pop() != target:
                    pass
                events.append(("rollback", target, active, target))
                active = target
            else:
                deletable = [v for v in versions if v != active]
                if not deletable:
                    continue
                gone = rng.choice(deletable)
                versions.remove(gone)
                naive = [v for v in naive if v != gone]
                events.append(("delete", gone, gone, None))
            assert replay_stack(events) == naive


def test_concurrent_rollbacks_never_skip_two_steps(configured):
    """Two rollbacks at once: one wins, the other is a clear 409 or the next step, never a
    double pop that lands on an older version than the history allows."""
    import threading

    a, b, c = _versions(configured, 3)
    for version in (a, b, c):
        _activate(configured, version)
    results: list[object] = []

    def go() -> None:
        try:
            results.append(_rollback(configured))
        except Conflict as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [r for r in results if isinstance(r, str)]  # in completion order
    assert done in ([b], [b, a]), results
    with configured.session() as session:
        assert registry_state(session=session).active_version == done[-1]


def test_migration_0003_seeds_the_last_switch(tmp_path):
    """A database migrated from 0002 keeps its one remembered switch as the first event."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_database(url=url, revision="0002")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE registry_state SET active_version = 't-new', "
                    "previous_version = 't-old' WHERE id = 1"
                )
            )
        upgrade_database(url=url)
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            assert audit.rollback_target(session, active="t-new") == "t-old"
            events, _ = list_events(session=session)
        assert [(e.action, e.from_value, e.to_value, e.actor) for e in events] == [
            ("activate", "t-old", "t-new", "migration 0003")
        ]
    finally:
        engine.dispose()


def test_bootstrap_key_is_recorded(env):
    from service.keys import bootstrap_admin_key

    settings = env.with_settings(admin_key=SecretStr("bootstrap-admin-key-0123456789"))
    with env.session() as session:
        bootstrap_admin_key(session=session, settings=settings)
        bootstrap_admin_key(session=session, settings=settings)  # idempotent: one event
        events, _ = list_events(session=session)
    assert [(e.action, e.actor_key_id, e.to_value) for e in events] == [
        ("key-bootstrap", None, "admin")
    ]
