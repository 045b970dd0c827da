"""Transformer registry: validation, activation, the DB-enforced single active row, rollback,
deletion, and the hot-swap holder — on SQLite and Postgres."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from svc_helpers import (
    NEW_DIM,
    NEW_MODEL,
    OLD_DIM,
    OLD_MODEL,
    make_transformer_onnx,
    unit_vectors,
)

from service.db.models import TransformerVersion
from service.db.registry_state import registry_state
from service.errors import Conflict, ContractError, NotFound
from service.registry.holder import ActiveTransformerHolder
from service.registry.store import (
    activate_transformer,
    delete_transformer,
    list_transformers,
    rollback_transformer,
    upload_transformer,
)


def upload(env, data: bytes, **kw):
    return upload_transformer(
        session_factory=env.session_factory, settings=env.settings, data=data, **kw
    )


def stored_files(env) -> list[str]:
    directory = env.settings.transformers_path
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_upload_stores_validated_version_inactive(configured):
    info = upload(configured, make_transformer_onnx())
    assert info.created and info.state == "inactive"
    assert (info.input_dim, info.output_dim) == (NEW_DIM, OLD_DIM)
    assert (info.source_model, info.target_model) == (NEW_MODEL, OLD_MODEL)
    assert info.threshold == pytest.approx(0.4)
    assert info.file.is_file() and info.file.name == f"{info.sha256}.onnx"
    assert stored_files(configured) == [info.file.name]  # no temp files left behind
    again = upload(configured, make_transformer_onnx())
    assert (again.version, again.created) == (info.version, False)
    with configured.session() as session:
        assert len(list_transformers(session=session, settings=configured.settings)) == 1
        assert registry_state(session=session).active_version is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"certainly not an onnx file", "not a valid ONNX"),
        (make_transformer_onnx(input_dim=NEW_DIM + 1), "backbone output dim"),
        (make_transformer_onnx(output_dim=OLD_DIM + 2), "gallery dim"),
        (make_transformer_onnx(source_model="other-backbone"), "source model"),
        (make_transformer_onnx(target_model="other-old-model"), "target model"),
        (make_transformer_onnx(weight=np.full((NEW_DIM, OLD_DIM), np.nan)), "NaN"),
        (make_transformer_onnx(threshold=3.0), "threshold"),
    ],
    ids=["garbage", "input-dim", "output-dim", "source", "target", "nan", "threshold"],
)
def test_bad_upload_refused_nothing_stored_active_unchanged(configured, data, message):
    good = upload(configured, make_transformer_onnx(), activate=True)
    with pytest.raises(ContractError, match=message):
        upload(configured, data, activate=True)
    with configured.session() as session:
        state = registry_state(session=session)
        versions = list_transformers(session=session, settings=configured.settings)
    assert state.active_version == good.version and state.generation == 1
    assert [v.version for v in versions] == [good.version]
    assert stored_files(configured) == [good.file.name]


def test_at_most_one_active_is_enforced_by_the_database(configured):
    a = upload(configured, make_transformer_onnx(seed=1), activate=True)
    b = upload(configured, make_transformer_onnx(seed=2))
    with configured.engine.connect() as conn, pytest.raises(IntegrityError):
        conn.execute(
            sa.update(TransformerVersion)
            .where(TransformerVersion.version == b.version)
            .values(state="active")
        )
        conn.commit()
    with configured.session() as session:
        active = session.scalars(
            sa.select(TransformerVersion.version).where(TransformerVersion.state == "active")
        ).all()
    assert active == [a.version]


def test_activation_bumps_generation_and_rollback_returns(configured):
    a = upload(configured, make_transformer_onnx(seed=1))
    b = upload(configured, make_transformer_onnx(seed=2))
    sf, settings = configured.session_factory, configured.settings
    activate_transformer(session_factory=sf, settings=settings, version=a.version)
    with configured.session() as session:
        assert registry_state(session=session).generation == 1
    # Activating the active version again changes nothing.
    activate_transformer(session_factory=sf, settings=settings, version=a.version)
    activate_transformer(session_factory=sf, settings=settings, version=b.version)
    with configured.session() as session:
        state = registry_state(session=session)
    assert (state.generation, state.active_version, state.previous_version) == (
        2,
        b.version,
        a.version,
    )
    back = rollback_transformer(session_factory=sf, settings=settings)
    assert back.version == a.version and back.active
    with configured.session() as session:
        state = registry_state(session=session)
        states = {v.version: v.state for v in list_transformers(session=session, settings=settings)}
    assert state.generation == 3 and state.active_version == a.version
    assert states == {a.version: "active", b.version: "inactive"}


def test_rollback_without_previous_is_a_conflict(configured):
    with pytest.raises(Conflict):
        rollback_transformer(
            session_factory=configured.session_factory, settings=configured.settings
        )


def test_delete_refuses_the_active_version_and_removes_inactive(configured):
    sf, settings = configured.session_factory, configured.settings
    a = upload(configured, make_transformer_onnx(seed=1), activate=True)
    b = upload(configured, make_transformer_onnx(seed=2))
    with pytest.raises(Conflict):
        delete_transformer(session_factory=sf, settings=settings, version=a.version)
    delete_transformer(session_factory=sf, settings=settings, version=b.version)
    assert not b.file.exists() and a.file.exists()
    with pytest.raises(NotFound):
        delete_transformer(session_factory=sf, settings=settings, version=b.version)
    with pytest.raises(NotFound):
        activate_transformer(session_factory=sf, settings=settings, version="t-000000000000")


def test_holder_swaps_on_generation_and_keeps_snapshots(configured):
    sf, settings = configured.session_factory, configured.settings
    holder = ActiveTransformerHolder(session_factory=sf, settings=settings)
    assert holder.refresh() is False and not holder.current().ready  # nothing active yet
    a = upload(configured, make_transformer_onnx(seed=1, threshold=0.3), activate=True)
    assert holder.refresh() is True
    first = holder.current()  # what an in-flight request holds
    assert (first.version, first.threshold) == (a.version, pytest.approx(0.3))
    assert holder.refresh() is False and holder.current() is first  # no change, no rebuild
    b = upload(configured, make_transformer_onnx(seed=2, threshold=0.6), activate=True)
    assert holder.refresh() is True
    second = holder.current()
    assert second.version == b.version and second.threshold == pytest.approx(0.6)
    # The old snapshot still works: in-flight requests finish on their version.
    probe = unit_vectors(3, NEW_DIM)
    assert first.runner.map(probe).shape == (3, OLD_DIM)
    assert not np.allclose(first.runner.map(probe), second.runner.map(probe))


def test_holder_keeps_serving_when_the_new_file_is_broken(configured):
    sf, settings = configured.session_factory, configured.settings
    a = upload(configured, make_transformer_onnx(seed=1), activate=True)
    holder = ActiveTransformerHolder(session_factory=sf, settings=settings)
    holder.refresh()
    b = upload(configured, make_transformer_onnx(seed=2), activate=True)
    b.file.write_bytes(b"corrupted on disk after activation")
    assert holder.refresh() is False
    assert holder.current().version == a.version and holder.last_error


def test_upload_scores_a_validation_pairs_file(configured, tmp_path):
    from service.contracts import PairsSet, save_pairs

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((NEW_DIM, OLD_DIM)).astype(np.float32)
    new = unit_vectors(40, NEW_DIM, seed=1)
    pairs = PairsSet(
        old=(new @ weight) * 2.0,  # exactly what the transformer computes, up to scale
        new=new,
        label=np.repeat(np.arange(20), 2),
        path=np.array([f"p{i // 2}/{i}.jpg" for i in range(40)]),
        split=np.array(["eval"] * 40),
    )
    pairs_file = save_pairs(tmp_path / "val.npz", pairs)
    configured.with_settings(validation_pairs=pairs_file)
    perfect = upload(configured, make_transformer_onnx(weight=weight))
    unrelated = upload(configured, make_transformer_onnx(seed=7))
    assert perfect.metrics["validation_rows"] == 40
    assert perfect.metrics["validation_mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert unrelated.metrics["validation_mean_cosine"] < 0.9
    assert perfect.metrics["top1"] == 90.0  # metrics carried by the file are kept


def test_poller_converges_several_holders(configured):
    """Two "workers" poll the generation; an activation reaches both without a direct call."""
    import time

    settings = configured.with_settings(generation_poll_seconds=0.05)
    holders = [
        ActiveTransformerHolder(session_factory=configured.session_factory, settings=settings)
        for _ in range(2)
    ]
    for holder in holders:
        holder.start_polling()
    try:
        a = upload(configured, make_transformer_onnx(seed=1), activate=True)
        deadline = time.monotonic() + 30  # a bound for a loaded machine, not a speed claim
        while time.monotonic() < deadline and any(
            h.current().version != a.version for h in holders
        ):
            time.sleep(0.05)
        assert [h.current().version for h in holders] == [a.version, a.version]
    finally:
        for holder in holders:
            holder.stop_polling()


def test_concurrent_activations_leave_exactly_one_active(configured):
    import threading

    versions = [upload(configured, make_transformer_onnx(seed=s)).version for s in range(4)]
    errors: list[BaseException] = []

    def activate(version: str) -> None:
        try:
            activate_transformer(
                session_factory=configured.session_factory,
                settings=configured.settings,
                version=version,
            )
        except Conflict:
            pass  # a lost race is reported as a Conflict, never as a second active row
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=activate, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with configured.session() as session:
        active = session.scalars(
            sa.select(TransformerVersion.version).where(TransformerVersion.state == "active")
        ).all()
        state = registry_state(session=session)
    assert len(active) == 1 and state.active_version == active[0]


def test_non_finite_metrics_are_stored_as_null(configured):
    info = upload(configured, make_transformer_onnx(metrics={"top1": 91.5, "gap": float("nan")}))
    with configured.session() as session:
        stored = list_transformers(session=session, settings=configured.settings)[0]
    assert info.metrics["gap"] is None and stored.metrics["top1"] == 91.5
