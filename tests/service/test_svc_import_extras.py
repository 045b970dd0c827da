"""Parquet and CSV import need pyarrow (the `tables` extra); without it they are a 415 and
.npz still imports."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest

from service.errors import UnsupportedMediaType
from service.gallery import import_files as importer


@pytest.fixture
def no_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importer.importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "pyarrow" else real(name, *a, **k),
    )


@pytest.mark.parametrize("format", ["parquet", "csv"])
def test_tables_without_pyarrow_are_unsupported(no_pyarrow: None, format: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=r"facebridge\[tables\]"):
        importer.read_import_file(io.BytesIO(b"x"), format=format)  # type: ignore[arg-type]


def test_npz_imports_without_pyarrow(no_pyarrow: None) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, old=np.eye(2, 4, dtype=np.float32), name=np.array(["a", "b"]))
    buffer.seek(0)
    chunks = list(importer.read_import_file(buffer, format="npz"))
    assert sum(len(c.external_ids) for c in chunks) == 2
