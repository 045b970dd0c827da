"""Gallery import files read in chunks, no database involved: ``.npz``, Parquet or CSV
(formats: :mod:`service.gallery.importer`). ``.npz`` members stream through
:mod:`service.gallery.npz_stream`; Parquet and CSV need pyarrow (the ``tables`` extra)."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from service.errors import ContractError, InvalidInput, UnsupportedMediaType
from service.gallery.npz_stream import ImportLimits, NpzColumns

ImportFormat = Literal["npz", "parquet", "csv"]
FORMATS: tuple[str, ...] = ("npz", "parquet", "csv")
VECTOR_LIST_COLUMNS = ("vector", "old", "embedding")
DEFAULT_CHUNK_ROWS = 10_000
_V_COLUMN = re.compile(r"^v(\d+)$")
MAX_TEXT = 255  # identities.name / external_id column width
MAX_ORIGIN = 1024  # faces.origin column width


@dataclass(frozen=True)
class ImportChunk:
    external_ids: list[str]
    names: list[str | None]
    vectors: np.ndarray
    origins: list[str | None]


def detect_format(name: str | None) -> ImportFormat:
    suffix = Path(name or "").suffix.lower().lstrip(".")
    if suffix in ("npz", "parquet", "csv"):
        return suffix  # type: ignore[return-value]
    if suffix == "pq":
        return "parquet"
    raise InvalidInput(
        f"cannot tell the import format from {name!r}: use a .npz, .parquet or .csv file "
        "(or pass the format)"
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _make_chunk(
    *,
    external_ids: list[Any] | None,
    names: list[Any] | None,
    vectors: np.ndarray,
    origins: list[Any] | None,
    first_row: int,
) -> ImportChunk:
    n = vectors.shape[0]
    ext = [_text(v) for v in external_ids] if external_ids is not None else [None] * n
    nam = [_text(v) for v in names] if names is not None else [None] * n
    keys: list[str] = []
    for i, (e, m) in enumerate(zip(ext, nam, strict=True)):
        key = e if e is not None else m
        if key is None:
            raise ContractError(f"row {first_row + i}: neither external_id nor name is set")
        if len(key) > MAX_TEXT or (m is not None and len(m) > MAX_TEXT):
            raise ContractError(f"row {first_row + i}: name/external_id over {MAX_TEXT} characters")
        keys.append(key)
    # The origin is informational: keep its tail when a path is longer than the column.
    org = [_text(v) for v in origins] if origins is not None else [None] * n
    org = [o if o is None or len(o) <= MAX_ORIGIN else o[-MAX_ORIGIN:] for o in org]
    return ImportChunk(external_ids=keys, names=nam, vectors=vectors, origins=org)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------
def _read_npz(
    source: Path | BinaryIO, chunk_rows: int, limits: ImportLimits
) -> Iterator[ImportChunk]:
    archive = NpzColumns(source, ("old", "name", "external_id", "path"))
    try:
        archive.check_sizes(limits)  # before a byte is inflated: zip bombs, lying headers
        if "old" not in archive.names:
            raise ContractError(f".npz lacks the 'old' array (has {archive.files})")
        if "name" not in archive.names and "external_id" not in archive.names:
            raise ContractError(".npz needs a 'name' or an 'external_id' array")
        shape, dtype = archive.shapes["old"], archive.dtypes["old"]
        if len(shape) != 2 or not np.issubdtype(dtype, np.number):
            raise ContractError(f"'old' must be a numeric [N, d] array, got {dtype} {shape}")
        limits.check_rows(shape[0])
        for key in archive.names[1:]:
            if archive.shapes[key] != (shape[0],):
                got = archive.shapes[key]
                raise ContractError(f"'{key}' must be 1-D with {shape[0]} rows, got shape {got}")
        start = 0
        for block in archive.blocks(chunk_rows):

            def part(key: str, block: dict[str, np.ndarray] = block) -> list[Any] | None:
                return block[key].tolist() if key in block else None

            yield _make_chunk(
                external_ids=part("external_id"),
                names=part("name"),
                vectors=np.asarray(block["old"], dtype=np.float32),
                origins=part("path"),
                first_row=start,
            )
            start += block["old"].shape[0]
    finally:
        archive.close()


def _vector_column_names(names: list[str]) -> list[str] | None:
    indexed = sorted((int(m.group(1)), n) for n in names if (m := _V_COLUMN.match(n)))
    if not indexed:
        return None
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise ContractError("vector columns must be v0 .. v{d-1} without gaps")
    return [n for _, n in indexed]


def _parse_vector_text(text: Any, row: int) -> list[float]:
    if text is None:
        raise ContractError(f"row {row}: empty vector")
    if isinstance(text, list | tuple | np.ndarray):
        return [float(x) for x in text]
    s = str(text).strip()
    try:
        if s.startswith("["):
            return [float(x) for x in json.loads(s)]
        return [float(x) for x in s.replace(",", " ").split()]
    except (ValueError, TypeError) as exc:
        raise ContractError(f"row {row}: vector is not a list of numbers") from exc


def _batch_to_chunk(batch: Any, first_row: int) -> ImportChunk:
    import pyarrow as pa

    names = batch.schema.names
    if "name" not in names and "external_id" not in names:
        raise ContractError("the file needs a 'name' or an 'external_id' column")
    v_cols = _vector_column_names(names)
    n = batch.num_rows
    try:
        if v_cols is not None:
            arrays = []
            for col in v_cols:
                column = batch.column(col)
                if column.null_count:
                    raise ContractError(f"column {col!r} has empty values")
                arrays.append(np.asarray(column.cast(pa.float32()).to_numpy(zero_copy_only=False)))
            vectors = np.stack(arrays, axis=1) if arrays else np.zeros((n, 0), np.float32)
        else:
            list_col = next((c for c in VECTOR_LIST_COLUMNS if c in names), None)
            if list_col is None:
                raise ContractError("no vector columns: expected v0..v{d-1} or a 'vector' column")
            values = batch.column(list_col).to_pylist()
            rows = [_parse_vector_text(v, first_row + i) for i, v in enumerate(values)]
            lengths = {len(r) for r in rows}
            if len(lengths) > 1:
                raise ContractError(f"vectors of different lengths {sorted(lengths)}")
            vectors = np.asarray(rows, dtype=np.float32).reshape(n, -1)
    except ContractError:
        raise
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ContractError(f"rows {first_row}..: unreadable vector values ({exc})") from exc

    def column(key: str) -> list[Any] | None:
        return batch.column(key).to_pylist() if key in names else None

    return _make_chunk(
        external_ids=column("external_id"),
        names=column("name"),
        vectors=vectors,
        origins=column("path"),
        first_row=first_row,
    )


def _read_parquet(
    source: Path | BinaryIO, chunk_rows: int, limits: ImportLimits
) -> Iterator[ImportChunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(f"not a readable Parquet file ({exc})") from exc
    meta = parquet.metadata
    limits.check_rows(int(meta.num_rows))
    groups = range(meta.num_row_groups)
    limits.check_expanded(sum(meta.row_group(i).total_byte_size for i in groups), what="the file")
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            yield _batch_to_chunk(batch, row)
            row += batch.num_rows
    except pa.ArrowException as exc:
        raise ContractError(f"Parquet file unreadable near row {row} ({exc})") from exc


def _read_csv(
    source: Path | BinaryIO, chunk_rows: int, limits: ImportLimits
) -> Iterator[ImportChunk]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    text_types = {k: pa.string() for k in ("external_id", "name", "path", "vector")}
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(column_types=text_types),
        )
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(f"not a readable CSV file ({exc})") from exc
    row = 0
    try:
        for batch in reader:
            limits.check_rows(row + batch.num_rows)  # counted as blocks stream in
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                yield _batch_to_chunk(part, row)
                row += part.num_rows
    except pa.ArrowException as exc:
        raise ContractError(f"CSV file unreadable near row {row} ({exc})") from exc


def read_import_file(
    source: Path | BinaryIO,
    *,
    format: ImportFormat,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    limits: ImportLimits | None = None,
) -> Iterator[ImportChunk]:
    """Chunks of a gallery import file (no database involved), within ``limits``."""
    readers = {"npz": _read_npz, "parquet": _read_parquet, "csv": _read_csv}
    if format not in readers:
        raise InvalidInput(f"unknown import format {format!r}; choose {', '.join(FORMATS)}")
    if format != "npz" and importlib.util.find_spec("pyarrow") is None:
        raise UnsupportedMediaType(
            f"{format} import needs pyarrow (install facebridge[tables]); .npz imports without it"
        )
    return readers[format](source, chunk_rows, limits or ImportLimits())
