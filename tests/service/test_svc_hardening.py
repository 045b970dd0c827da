"""Issue 11 (hardening), storage side: a revoked bootstrap key stays revoked, weak bootstrap
keys are refused, a replica retries a version it failed to load (and says so), a version that
does not fit the running backbone is refused on load, and an upload that fails after its file
was written leaves no file behind."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from svc_helpers import (
    NEW_DIM,
    make_transformer_onnx,
)
from test_svc_registry import upload

import service.registry.holder as holder_module
from service.errors import Unauthorized
from service.keys import bootstrap_admin_key, list_keys, revoke_key, verify_key
from service.registry.holder import ActiveTransformerHolder
from service.registry.store import BackboneFacts, activate_transformer, upload_transformer
from service.settings import ServiceSettings

BOOTSTRAP = "ops-bootstrap-key-7Qx2LmZp9Rt4"


def test_a_revoked_bootstrap_key_stays_revoked_after_a_restart(env) -> None:
    settings = env.with_settings(admin_key=SecretStr(BOOTSTRAP))
    with env.session() as session:
        info = bootstrap_admin_key(session=session, settings=settings)
        assert info is not None
        revoke_key(session=session, key_id=info.id)
    with env.session() as session:  # the next start, FACEBRIDGE_ADMIN_KEY unchanged
        bootstrap_admin_key(session=session, settings=settings)
    with env.session() as session, pytest.raises(Unauthorized):
        verify_key(session=session, key=BOOTSTRAP, scope="admin")
    with env.session() as session:
        assert [k.revoked for k in list_keys(session=session)] == [True]


@pytest.mark.parametrize("key", ["a" * 16, "ab" * 12, "abcd" * 4, "x" * 40])
def test_low_entropy_bootstrap_keys_are_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="entropy"):
        ServiceSettings(admin_key=key)


def test_a_random_16_character_key_is_accepted() -> None:
    import secrets

    for _ in range(50):
        ServiceSettings(admin_key=secrets.token_urlsafe(12))  # 16 characters


def test_a_replica_retries_a_version_it_failed_to_load(
    configured, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(holder_module, "RETRY_FIRST_SECONDS", 0.0, raising=False)
    a = upload(configured, make_transformer_onnx(seed=1))
    b = upload(configured, make_transformer_onnx(seed=2))
    sf, settings = configured.session_factory, configured.settings
    activate_transformer(session_factory=sf, settings=settings, version=a.version)
    holder = ActiveTransformerHolder(session_factory=sf, settings=settings)
    holder.refresh()
    activate_transformer(session_factory=sf, settings=settings, version=b.version)
    hidden = b.file.with_name(b.file.name + ".away")
    b.file.rename(hidden)  # the shared volume lost the file (or has not synced it yet)
    assert holder.refresh() is False
    assert holder.current().version == a.version  # keeps serving the previous version
    hidden.rename(b.file)
    assert holder.refresh() is True  # retried although the generation did not move
    assert holder.current().version == b.version and holder.status().in_sync


def test_a_replica_says_which_version_it_failed_to_load(configured) -> None:
    a = upload(configured, make_transformer_onnx(seed=1))
    b = upload(configured, make_transformer_onnx(seed=2))
    sf, settings = configured.session_factory, configured.settings
    activate_transformer(session_factory=sf, settings=settings, version=a.version)
    holder = ActiveTransformerHolder(session_factory=sf, settings=settings)
    holder.refresh()
    activate_transformer(session_factory=sf, settings=settings, version=b.version)
    b.file.unlink()
    holder.refresh()
    status = holder.status()
    assert status.served_version == a.version and status.expected_version == b.version
    assert not status.in_sync and status.failures == 1 and b.version in str(status.last_error)


def test_a_failed_load_backs_off(configured, monkeypatch: pytest.MonkeyPatch) -> None:
    a = upload(configured, make_transformer_onnx(seed=1))
    sf, settings = configured.session_factory, configured.settings
    activate_transformer(session_factory=sf, settings=settings, version=a.version)
    attempts = []

    def failing_loader(path):  # type: ignore[no-untyped-def]
        attempts.append(path)
        raise OSError("volume not mounted")

    holder = ActiveTransformerHolder(session_factory=sf, settings=settings, loader=failing_loader)
    for _ in range(5):
        holder.refresh()
    assert len(attempts) == 1  # the retry waits for its backoff (1 s, doubling to 60 s)
    assert holder.status().retry_in_seconds is not None
    assert 0 < holder.status().retry_in_seconds <= holder_module.RETRY_FIRST_SECONDS


def test_a_version_for_another_backbone_is_refused_on_load(configured) -> None:
    a = upload(configured, make_transformer_onnx(seed=1))
    sf, settings = configured.session_factory, configured.settings
    activate_transformer(session_factory=sf, settings=settings, version=a.version)
    holder = ActiveTransformerHolder(
        session_factory=sf,
        settings=settings,
        serving=BackboneFacts(model_id="mobilefacenet-128", output_dim=NEW_DIM),
    )
    holder.refresh()
    status = holder.status()
    assert holder.current().runner is None
    assert status.expected_version == a.version
    assert "source model" in str(status.last_error) and "mobilefacenet-128" in str(
        status.last_error
    )


def test_an_upload_that_fails_after_writing_its_file_leaves_no_file(configured) -> None:
    class LostDatabase(Session):
        def commit(self) -> None:
            raise OperationalError("INSERT", {}, Exception("database went away"))

    failing = sessionmaker(bind=configured.engine, class_=LostDatabase, expire_on_commit=False)
    with pytest.raises(OperationalError, match="database went away"):
        upload_transformer(
            session_factory=failing,
            settings=configured.settings,
            data=make_transformer_onnx(seed=3),
        )
    directory = configured.settings.transformers_path
    assert sorted(p.name for p in directory.iterdir()) == []
