"""Captures as bridge pairs from the deployment's own domain (``migration export-pairs``).

Each captured native vector is one pairs-file row (service.contracts): ``new`` = the captured
vector, ``old`` = the identity's old-space template (its first ``legacy`` face: a real
old-model vector; mapped faces are the transformer's own output and are never used as targets),
``label`` = the identity id, ``name`` = its name (else external id), ``path`` =
``capture:<face id>``, ``split`` = ``bridge``. Identities without a legacy face are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.contracts import SPLIT_BRIDGE, PairsSet, save_pairs
from service.db.models import Face, FaceCapture, Identity
from service.errors import InvalidInput
from service.gallery.store import vector_from_bytes


@dataclass(frozen=True)
class ExportReport:
    rows: int
    skipped_no_template: int
    path: str


def capture_pairs(session: Session) -> tuple[PairsSet | None, int]:
    """(the pairs of every capture, captures skipped for want of a legacy template)."""
    templates = dict(
        session.execute(
            select(Face.identity_id, func.min(Face.id))
            .where(Face.source == "legacy")
            .group_by(Face.identity_id)
        ).all()
    )
    rows = session.execute(
        select(
            Face.id, Face.identity_id, Face.vector, Face.dim, Identity.name, Identity.external_id
        )
        .join(FaceCapture, FaceCapture.face_id == Face.id)
        .join(Identity, Identity.id == Face.identity_id)
        .order_by(Face.id)
    ).all()
    kept = [r for r in rows if int(r[1]) in templates]
    if not kept:
        return None, len(rows)
    template_ids = sorted({templates[int(r[1])] for r in kept})
    old_rows = session.execute(
        select(Face.id, Face.vector, Face.dim).where(Face.id.in_(template_ids))
    ).all()
    old_by_face = {int(i): vector_from_bytes(v, d) for i, v, d in old_rows}
    pairs = PairsSet(
        old=np.stack([old_by_face[templates[int(r[1])]] for r in kept]),
        new=np.stack([vector_from_bytes(r[2], r[3]) for r in kept]),
        label=np.asarray([int(r[1]) for r in kept], np.int64),
        name=np.asarray([r[4] or r[5] or f"identity-{r[1]}" for r in kept]).astype(str),
        path=np.asarray([f"capture:{r[0]}" for r in kept]).astype(str),
        split=np.asarray([SPLIT_BRIDGE] * len(kept)),
    )
    return pairs, len(rows) - len(kept)


def export_capture_pairs(session: Session, *, out: str | Path) -> ExportReport:
    pairs, skipped = capture_pairs(session)
    if pairs is None:
        raise InvalidInput(f"no capture has a legacy template to pair with ({skipped} skipped)")
    if Path(out).suffix != ".npz":
        raise InvalidInput(f"--out must end in .npz, got {out}")
    save_pairs(out, pairs)
    return ExportReport(rows=len(pairs), skipped_no_template=skipped, path=str(out))
