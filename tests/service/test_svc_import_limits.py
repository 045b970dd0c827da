"""Issue 11 (hardening): a gallery file is checked from its headers before its data is
inflated: an .npz zip bomb, a tampered archive, pickled arrays, too many rows (.npz, Parquet,
CSV) are refused with one clear line, memory bounded, nothing stored."""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from svc_helpers import unit_vectors

from service.errors import ContractError
from service.gallery.importer import import_gallery

DIM = 8


def write_bomb(path: Path, *, rows: int, dim: int, declared_rows: int | None = None) -> Path:
    """An .npz whose ``old`` is ``rows`` x ``dim`` float32 zeros, deflated (a few MB expand to
    hundreds); ``declared_rows`` writes a header that lies about the row count."""
    header_rows = rows if declared_rows is None else declared_rows
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("old.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array_header_1_0(
                out,
                {"descr": "<f4", "fortran_order": False, "shape": (header_rows, dim)},
            )
            zeros = bytes(dim * 4 * 4096)
            for _ in range(rows // 4096):
                out.write(zeros)
        archive.writestr("name.npy", _npy(np.asarray(["x"] * rows)))
    return path


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def run(env, source: Path) -> object:
    return import_gallery(session_factory=env.session_factory, source=source, settings=env.settings)


def test_an_npz_zip_bomb_is_refused_without_inflating_it(sqlite_env, tmp_path: Path) -> None:
    sqlite_env.with_settings(max_import_expanded_bytes=64 * 1024 * 1024)
    bomb = write_bomb(tmp_path / "bomb.npz", rows=1 << 20, dim=64)  # 256 MiB of zeros
    assert bomb.stat().st_size < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(ContractError, match="expands to"):
            run(sqlite_env, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"the refusal allocated {peak / 2**20:.0f} MiB"


def test_a_large_npz_is_read_in_chunks_with_flat_memory(sqlite_env, tmp_path: Path) -> None:
    """Within the limits, rows stream in chunks: memory does not grow with the file."""
    sqlite_env.with_settings(max_import_rows=10)
    bomb = write_bomb(tmp_path / "rows.npz", rows=1 << 20, dim=64)  # under the byte limit
    tracemalloc.start()
    try:
        with pytest.raises(ContractError, match="more than 10 rows"):
            run(sqlite_env, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024


def test_a_header_that_lies_about_its_size_is_refused(sqlite_env, tmp_path: Path) -> None:
    liar = write_bomb(tmp_path / "liar.npz", rows=8192, dim=DIM, declared_rows=1 << 30)
    with pytest.raises(ContractError, match="tampered"):
        run(sqlite_env, liar)


def test_pickled_arrays_are_refused(sqlite_env, tmp_path: Path) -> None:
    path = tmp_path / "pickle.npz"
    names = np.empty(2, dtype=object)
    names[:] = ["a", "b"]
    np.savez(path, old=unit_vectors(2, DIM), name=names)
    with pytest.raises(ContractError, match="pickle"):
        run(sqlite_env, path)


def test_parquet_and_csv_over_the_row_limit_are_refused(sqlite_env, tmp_path: Path) -> None:
    sqlite_env.with_settings(max_import_rows=100)
    vectors = unit_vectors(150, DIM)
    table = pa.table(
        {"external_id": [f"p{i}" for i in range(150)]}
        | {f"v{j}": vectors[:, j] for j in range(DIM)}
    )
    pq.write_table(table, tmp_path / "big.parquet")
    lines = ["external_id," + ",".join(f"v{j}" for j in range(DIM))]
    lines += [f"p{i}," + ",".join(f"{x:.5f}" for x in vectors[i]) for i in range(150)]
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    for name in ("big.parquet", "big.csv"):
        with pytest.raises(ContractError, match="more than 100 rows"):
            run(sqlite_env, tmp_path / name)


def test_a_fortran_ordered_npz_is_refused_with_a_clear_line(sqlite_env, tmp_path: Path) -> None:
    """Rows cannot be streamed out of a column-major array: refused, never read whole."""
    path = tmp_path / "fortran.npz"
    np.savez(path, old=np.asfortranarray(unit_vectors(5, DIM)), name=np.asarray(list("abcde")))
    with pytest.raises(ContractError, match="Fortran order"):
        run(sqlite_env, path)
