"""Our RecordIO reader/writer (no mxnet) against the dmlc byte layout and a round trip."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from service.errors import ContractError
from service.inference.images import decode_image
from training.data.record_set import InsightFaceRecordSet, write_record_set
from training.data.recordio import (
    MAGIC,
    RecordIOReader,
    RecordIOWriter,
    pack_payload,
    read_index,
    unpack_payload,
)

from .conftest import jpeg_bytes

M = struct.pack("<I", MAGIC)


def _part(cflag: int, data: bytes) -> bytes:
    pad = b"\0" * ((-len(data)) % 4)
    return M + struct.pack("<I", (cflag << 29) | len(data)) + data + pad


def test_writer_produces_the_dmlc_layout(tmp_path: Path) -> None:
    rec = tmp_path / "x.rec"
    with RecordIOWriter(rec) as w:
        w.write(b"abcde")  # whole record, padded to 8
        w.write(b"ab\0\0" + M + b"cd")  # magic at an aligned offset: split in two parts
        w.write(b"a" + M + b"xyz")  # magic at an unaligned offset: left alone
    expected = (
        _part(0, b"abcde") + _part(1, b"ab\0\0") + _part(3, b"cd") + _part(0, b"a" + M + b"xyz")
    )
    assert rec.read_bytes() == expected


PAYLOADS = [
    b"",
    b"x",
    b"abcd",
    M,
    M + M,
    M + b"tail",
    b"head" + M,
    b"head" + M + b"mid." + M + M + b"end",
    b"12" + M + b"unaligned",
    bytes(range(256)) * 3,
]


def test_round_trip_with_magic_inside_payloads(tmp_path: Path) -> None:
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    keys = list(range(len(PAYLOADS)))[::-1]  # index lines written in reverse key order
    with RecordIOWriter(rec, idx) as w:
        for key, payload in zip(keys, PAYLOADS, strict=True):
            w.write(payload, key=key)
    reader = RecordIOReader(rec, idx)
    for key, payload in zip(keys, PAYLOADS, strict=True):
        assert reader.read_key(key) == payload
    assert list(reader) == PAYLOADS
    # The multi-part payloads really were split (more magic-led headers than records).
    raw = rec.read_bytes()
    headers = sum(1 for i in range(0, len(raw) - 3, 4) if raw[i : i + 4] == M)
    assert headers > len(PAYLOADS)
    assert list(read_index(idx)) == keys
    reader.close()


def test_header_pack_unpack() -> None:
    header, data = unpack_payload(pack_payload(b"jpeg", label=3.0, id=7, id2=9))
    assert (header.flag, header.label, header.id, header.id2, data) == (0, 3.0, 7, 9, b"jpeg")
    header, data = unpack_payload(pack_payload(b"img", label=[5.0, 2.5]))
    assert header.flag == 2 and data == b"img"
    np.testing.assert_array_equal(header.labels, np.array([5.0, 2.5], np.float32))


def test_corrupt_file_is_a_contract_error(tmp_path: Path) -> None:
    rec, idx = tmp_path / "b.rec", tmp_path / "b.idx"
    rec.write_bytes(b"\0" * 16)
    idx.write_text("0\t0\n")
    with pytest.raises(ContractError, match="bad magic"):
        RecordIOReader(rec, idx).read_key(0)


def test_insightface_set_round_trip(tmp_path: Path, face_samples: list) -> None:
    encoded = [(jpeg_bytes(img), label) for img, label in face_samples]
    # A JPEG with the magic at an aligned offset inside the record (decoders ignore bytes after
    # the end-of-image marker), so that record is stored in several parts.
    first, label0 = encoded[0]
    pad = b"\0" * ((-(len(first) + 24)) % 4)
    encoded[0] = (first + pad + M + b"trailer", label0)
    out = write_record_set(tmp_path / "set", encoded)
    assert (out / "property").read_text().strip() == "4,112,112"
    assert read_index(out / "train.idx") and list(read_index(out / "train.idx"))[-1] == 0

    data = InsightFaceRecordSet(out)
    assert len(data) == len(encoded) and data.num_classes == 4
    got = sorted(data[i] for i in range(len(data)))
    assert got == sorted(encoded)
    # Identity ranges cover every image of the class, nothing else.
    for cls, (start, end) in data.identity_ranges.items():
        assert {data.label_of(k) for k in range(start, end)} == {cls}
    image = decode_image(encoded[0][0], max_bytes=1 << 20, max_pixels=1 << 20)
    assert image.shape == (112, 112, 3)
