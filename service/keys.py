"""API keys: random, shown once, stored as sha256, looked up by prefix, compared in constant time.

A key looks like ``fb_<8 hex>_<43 urlsafe chars>`` (256 bits of randomness). For such a key a
plain sha256 is enough (no password stretching needed: nothing to brute-force). The bootstrap
admin key from ``FACEBRIDGE_ADMIN_KEY`` may have any shape; its lookup prefix is derived from
its hash. Scopes: ``identify``, ``enrol``, ``admin``; ``admin`` implies the other two.
The HTTP header is ``X-API-Key``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import ApiKey, utcnow
from service.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from service.registry import audit
from service.registry.audit import LOCAL_ACTOR, SYSTEM_ACTOR, Actor

if TYPE_CHECKING:
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)

Scope = Literal["identify", "enrol", "admin"]
SCOPES: tuple[str, ...] = ("identify", "enrol", "admin")
API_KEY_HEADER = "X-API-Key"
BOOTSTRAP_KEY_NAME = "bootstrap admin (FACEBRIDGE_ADMIN_KEY)"
_KEY_PATTERN = re.compile(r"^(fb_[0-9a-f]{8})_[A-Za-z0-9_-]{20,}$")
MAX_KEY_LENGTH = 512


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str | None
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @classmethod
    def from_row(cls, row: ApiKey) -> ApiKeyInfo:
        return cls(
            id=int(row.id),
            name=row.name,
            prefix=row.prefix,
            scopes=tuple(s for s in row.scopes.split(",") if s),
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(key: str) -> str:
    """The lookup prefix: embedded in generated keys, derived from the hash for others."""
    match = _KEY_PATTERN.match(key)
    if match:
        return match.group(1)
    return "ext_" + hash_key(key)[:8]


def _normalize_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    chosen = []
    for scope in scopes:
        for part in str(scope).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in SCOPES:
                raise InvalidInput(f"unknown scope {part!r}; choose from {', '.join(SCOPES)}")
            if part not in chosen:
                chosen.append(part)
    if not chosen:
        raise InvalidInput(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return tuple(s for s in SCOPES if s in chosen)


def generate_key() -> str:
    return f"fb_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def create_key(
    *,
    session: Session,
    scopes: Iterable[str],
    name: str | None = None,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> tuple[ApiKeyInfo, str]:
    """A new key (audited). Returns its record and the plaintext, never stored nor shown again."""
    chosen = _normalize_scopes(scopes)
    plaintext = generate_key()
    row = ApiKey(
        name=(name or None),
        prefix=key_prefix(plaintext),
        key_hash=hash_key(plaintext),
        scopes=",".join(chosen),
    )
    session.add(row)
    session.flush()
    audit.record_event(
        session,
        action=audit.ACTION_KEY_CREATE,
        actor=actor,
        subject=_key_subject(row),
        to_value=row.scopes,
        reason=reason,
    )
    session.commit()
    return ApiKeyInfo.from_row(row), plaintext


def _revoke(session: Session, row: ApiKey, *, actor: Actor, reason: str | None) -> None:
    """Within the caller's transaction: revoke ``row`` and record who did it and why."""
    row.revoked_at = utcnow()
    audit.record_event(
        session,
        action=audit.ACTION_KEY_REVOKE,
        actor=actor,
        subject=_key_subject(row),
        from_value="active",
        to_value="revoked",
        reason=reason,
    )


def _key_subject(row: ApiKey) -> str:
    """How the audit history names a key: id, name and prefix (never the secret)."""
    return f"key {row.id}" + (f" ({row.name})" if row.name else "") + f" {row.prefix}"


def verify_key(
    *, session: Session, key: str | None, scope: str | None, touch: bool = True
) -> ApiKeyInfo:
    """The key's record when it is valid and allows ``scope`` (None: any valid key).

    Unauthorized: missing, unknown or revoked. Forbidden: valid but lacking the scope.
    """
    if scope is not None and scope not in SCOPES:
        raise InvalidInput(f"unknown scope {scope!r}")
    if not key:
        raise Unauthorized(f"missing API key (header {API_KEY_HEADER})")
    if len(key) > MAX_KEY_LENGTH:
        raise Unauthorized("unknown API key")
    presented = hash_key(key)
    candidates = session.scalars(select(ApiKey).where(ApiKey.prefix == key_prefix(key))).all()
    match = None
    for row in candidates:  # compare every candidate: time does not depend on which matched
        if hmac.compare_digest(row.key_hash, presented):
            match = row
    if match is None or match.revoked_at is not None:
        raise Unauthorized("unknown or revoked API key")
    info = ApiKeyInfo.from_row(match)
    if scope is not None and not info.allows(scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope")
    if touch:
        match.last_used_at = utcnow()
        session.commit()
    return info


def authenticate(*, session: Session, key: str | None, scope: str) -> ApiKeyInfo:
    """Alias of :func:`verify_key` (the name the HTTP layer uses)."""
    return verify_key(session=session, key=key, scope=scope)


def list_keys(*, session: Session, include_revoked: bool = True) -> list[ApiKeyInfo]:
    stmt = select(ApiKey).order_by(ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return [ApiKeyInfo.from_row(r) for r in session.scalars(stmt)]


def revoke_key(
    *,
    session: Session,
    key_id: int,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
    caller_id: int | None = None,
    confirm: bool = False,
) -> ApiKeyInfo:
    """Revoke a key (idempotent; audited once). NotFound for an unknown id.

    A key revoking itself (``caller_id == key_id``) is refused (Conflict) unless ``confirm``:
    an operator who locks themselves out by mistake cannot undo it through the API.
    """
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    if caller_id is not None and int(caller_id) == int(key_id) and not confirm:
        raise Conflict(
            f"API key {key_id} is the key making this request; a key revoking itself needs "
            "?confirm=true"
        )
    if row.revoked_at is None:
        _revoke(session, row, actor=actor, reason=reason)
        session.commit()
    return ApiKeyInfo.from_row(row)


def bootstrap_admin_key(*, session: Session, settings: ServiceSettings) -> ApiKeyInfo | None:
    """Store ``settings.admin_key``'s hash as an admin key (at start-up). Idempotent.

    A changed env key replaces the previous bootstrap key (the old one is revoked). A key that
    was revoked stays revoked, also when the environment still names it: revocation is final.
    """
    if settings.admin_key is None:
        return None
    plaintext = settings.admin_key.get_secret_value()
    digest = hash_key(plaintext)
    existing = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    previous = session.scalars(
        select(ApiKey).where(ApiKey.name == BOOTSTRAP_KEY_NAME, ApiKey.revoked_at.is_(None))
    ).all()
    created = False
    for row in previous:
        if row.key_hash != digest:
            _revoke(session, row, actor=SYSTEM_ACTOR, reason="FACEBRIDGE_ADMIN_KEY changed")
    if existing is None:
        existing = ApiKey(
            name=BOOTSTRAP_KEY_NAME, prefix=key_prefix(plaintext), key_hash=digest, scopes="admin"
        )
        session.add(existing)
        created = True
    elif existing.revoked_at is not None:
        log.warning(
            "FACEBRIDGE_ADMIN_KEY names a key revoked at %s: it stays revoked; set a new one",
            existing.revoked_at.isoformat(),
        )
    try:
        if created:
            session.flush()
            audit.record_event(
                session,
                action=audit.ACTION_KEY_BOOTSTRAP,
                actor=SYSTEM_ACTOR,
                subject=_key_subject(existing),
                to_value="admin",
                reason="stored from FACEBRIDGE_ADMIN_KEY",
            )
        session.commit()
    except IntegrityError:  # another worker stored it at the same moment
        session.rollback()
        existing = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one()
    return ApiKeyInfo.from_row(existing)
