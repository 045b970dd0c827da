"""Gallery import: .npz / Parquet / CSV, idempotent per external id, chunked, all-or-nothing."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from svc_helpers import unit_vectors

from service.db.models import Face, Identity
from service.errors import ContractError, InvalidInput
from service.gallery.importer import import_gallery
from service.gallery.opening import open_gallery
from service.gallery.store import check_consistency

DIM = 8


def counts(env) -> tuple[int, int]:
    with env.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Identity)),
            session.scalar(select(func.count()).select_from(Face)),
        )


def run_import(env, sync, source, **kw):
    """Import, then let this replica apply the change log (what the HTTP route does)."""
    report = import_gallery(
        session_factory=env.session_factory, source=source, settings=env.settings, **kw
    )
    if sync is not None:
        sync.refresh()
    return report


def write_npz(path, vectors, names, external_ids=None):
    arrays = {"old": vectors, "name": np.asarray(names)}
    if external_ids is not None:
        arrays["external_id"] = np.asarray(external_ids)
    np.savez(path, **arrays)
    return path


def write_csv(path, vectors, external_ids, names):
    lines = ["external_id,name," + ",".join(f"v{i}" for i in range(vectors.shape[1]))]
    for e, n, v in zip(external_ids, names, vectors, strict=True):
        lines.append(f"{e},{n}," + ",".join(repr(float(x)) for x in v))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_npz_import_is_idempotent_and_reaches_the_index(env, tmp_path):
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    index = sync.primary
    vectors = unit_vectors(30, DIM) * 1.4  # legacy vectors are not normalised
    names = [f"person_{i % 12}" for i in range(30)]
    path = write_npz(tmp_path / "g.npz", vectors, names)
    first = run_import(env, sync, path, model_id="dlib-resnet-v1", chunk_rows=7)
    assert (first.rows, first.identities_created, first.faces_added) == (30, 12, 30)
    again = run_import(env, sync, path, chunk_rows=7)
    assert (again.identities_created, again.identities_matched) == (0, 12)
    assert (again.faces_added, again.faces_skipped) == (0, 30)
    assert counts(env) == (12, 30) and index.ntotal == 30
    with env.session() as session:
        assert check_consistency(session=session, index=index).consistent
        # The name doubles as external id; the same name maps to the same identity.
        ext = session.scalars(select(Identity.external_id).order_by(Identity.external_id)).all()
    assert ext == sorted({*names})
    # Stored normalised: a unit query equal to row 0 finds it with cosine 1.
    with env.session() as session:
        face_id = session.scalars(select(Face.id).order_by(Face.id)).first()
    hits = index.search(vectors[0] / np.linalg.norm(vectors[0]), k=1)[0]
    assert hits.ids.tolist() == [face_id] and hits.scores[0] == pytest.approx(1.0, abs=1e-5)


def test_parquet_list_column_and_csv_columns_share_identities(env, tmp_path):
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    index = sync.primary
    vectors = unit_vectors(10, DIM, seed=3)
    ext = [f"emp-{i % 4:03d}" for i in range(10)]
    names = [f"Name {i % 4}" for i in range(10)]
    table = pa.table(
        {
            "external_id": ext,
            "name": names,
            "vector": [v.tolist() for v in vectors],
        }
    )
    pq.write_table(table, tmp_path / "g.parquet", row_group_size=3)
    report = run_import(env, sync, tmp_path / "g.parquet", chunk_rows=4)
    assert (report.format, report.identities_created, report.faces_added) == ("parquet", 4, 10)
    # The same people in CSV (v0..vN columns), two new vectors: only those are added.
    more = np.vstack([vectors[:3], unit_vectors(2, DIM, seed=8)])
    csv = write_csv(tmp_path / "g.csv", more, [*ext[:3], "emp-000", "emp-777"], ["x"] * 5)
    report = run_import(env, sync, csv, chunk_rows=2)
    assert (report.identities_created, report.faces_added, report.faces_skipped) == (1, 2, 3)
    assert counts(env) == (5, 12) and index.ntotal == 12


def test_stream_source_with_filename(env, tmp_path):
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    path = write_csv(tmp_path / "g.csv", unit_vectors(3, DIM), ["a", "b", "c"], ["A", "B", "C"])
    with open(path, "rb") as fh:
        report = run_import(env, sync, fh, filename="upload.csv")
    assert report.faces_added == 3
    buffer = io.BytesIO()
    np.savez(buffer, old=unit_vectors(2, DIM, seed=1), external_id=np.array(["a", "z"]))
    buffer.seek(0)
    report = run_import(env, sync, buffer, format="npz")
    assert (report.identities_matched, report.identities_created) == (1, 1)


def put(path, data):
    """Write ``data`` (bytes or text) to ``path``; returns the path."""
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def savez(path, **arrays):
    np.savez(path, **arrays)
    return path


def _malformed_csv(tmp_path):
    good = write_csv(tmp_path / "bad.csv", unit_vectors(9, DIM), list("abcdefghi"), ["n"] * 9)
    lines = good.read_text().splitlines()
    lines[8] = lines[8].rsplit(",", 1)[0] + ",nan"  # row 7, in the last chunk
    good.write_text("\n".join(lines) + "\n")
    return good


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (
            lambda p: put(p / "x.npz", b"PK\x03\x04 not really a zip"),
            ContractError,
        ),
        (lambda p: write_npz(p / "x.npz", unit_vectors(3, DIM), ["a", "b"]), ContractError),
        (
            lambda p: savez(p / "x.npz", vectors=unit_vectors(2, DIM)),
            ContractError,
        ),
        (lambda p: write_npz(p / "x.npz", unit_vectors(3, DIM + 1), list("abc")), ContractError),
        (lambda p: write_npz(p / "x.npz", np.zeros((2, DIM)), list("ab")), ContractError),
        (_malformed_csv, ContractError),
        (
            lambda p: put(p / "x.csv", "external_id,v0,v2\na,1,2\n"),
            ContractError,
        ),
        (lambda p: put(p / "x.csv", "v0,v1\n1,2\n"), ContractError),
        (lambda p: put(p / "x.txt", "hello"), InvalidInput),
        (lambda p: write_npz(p / "x.npz", unit_vectors(1, DIM), ["n" * 300]), ContractError),
    ],
    ids=[
        "not-zip",
        "ragged",
        "no-old",
        "wrong-dim",
        "zero-vector",
        "nan-late-row",
        "gap-columns",
        "no-key",
        "unknown-format",
        "long-name",
    ],
)
def test_malformed_files_store_nothing(env, tmp_path, make, error):
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    index = sync.primary
    seed = write_npz(tmp_path / "seed.npz", unit_vectors(2, DIM, seed=5), ["s1", "s2"])
    run_import(env, sync, seed)
    before_sql, before_index = counts(env), index.ids()
    with pytest.raises(error):
        run_import(env, sync, make(tmp_path), chunk_rows=3)
    assert counts(env) == before_sql and index.ids() == before_index


def test_conflicting_model_id_is_refused(env, tmp_path):
    path = write_npz(tmp_path / "g.npz", unit_vectors(2, DIM), ["a", "b"])
    run_import(env, None, path, model_id="model-a")
    with pytest.raises(ContractError, match="model id"):
        run_import(
            env,
            None,
            write_npz(tmp_path / "h.npz", unit_vectors(1, DIM, seed=2), ["c"]),
            model_id="model-b",
        )
    assert counts(env) == (2, 2)
