"""What a finished demo build leaves in its data directory (``demo.json``), the new_flip cache
that survives rebuilds, and the constants every step shares."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from service.contracts import load_backbone_manifest
from service.errors import InvalidInput
from service.files import atomic_path, file_sha256, write_text_atomically
from service.kit import kit_pairs_path

STATE_FILE = "demo.json"
# Bump when the layout or the recipe of the demo data changes: an older demo-data is rebuilt.
STATE_VERSION = 6
# Survives rebuilds (--force, another recipe): the kit's mirrored-crop embeddings (new_flip).
CACHE_DIR = "cache"
FLIP_CACHE_FILE = "new_flip.npz"
DEFAULT_DATA_DIR = Path("demo-data")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
SYNTHETIC_BANNER = "SYNTHETIC DATA"

# The demo fits the project's `default` recipe (two-way ridge), as `facebridge transformer fit`
# does: under a second on the kit's 3,811 bridge rows.
DEMO_RECIPE = "default"
DEMO_SEED = 0
N_EXAMPLES = 3
# How many probe candidates the verification may try to find N_EXAMPLES correct ones; the
# measured hit rate is printed either way.
MAX_EXAMPLE_CANDIDATES = 12
TORCH_THREADS = 2


@dataclasses.dataclass
class DemoExample:
    image: str  # absolute path of a probe image
    expected: str  # the person it must come back as
    verified: bool = False
    kind: str = "aligned"  # "aligned" (112x112 crop) or "photo" (the service detects + aligns)
    matched: bool = False  # the top candidate's score also clears the decision threshold


@dataclasses.dataclass
class DemoState:
    version: int
    source: str  # "kit" or "synthetic"
    fingerprint: str
    data_dir: str
    env: dict[str, str]  # FACEBRIDGE_* settings the service runs with
    api_key: str  # a demo key with the identify scope (demo data only; git-ignored)
    transformer: dict[str, Any]
    evaluation: dict[str, Any]
    gallery: dict[str, int]
    examples: list[DemoExample]
    verification: dict[str, Any]
    timings: dict[str, float]
    # new_flip of the pairs: {"rows": N, "computed": rows embedded by this build (the rest came
    # from the cache)}; empty when the pairs carry none
    new_flip: dict[str, int] = dataclasses.field(default_factory=dict)
    # an admin key for the operator console at /console (demo data only; git-ignored)
    console_key: str = ""

    def save(self, path: Path) -> None:
        write_text_atomically(
            path, json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
        )

    @classmethod
    def load(cls, path: Path) -> DemoState | None:
        try:
            raw = json.loads(path.read_text())
            raw["examples"] = [DemoExample(**e) for e in raw["examples"]]
            return cls(**raw)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def files_present(self) -> bool:
        """The database, the transformer, the backbone and the example images still exist."""
        database = self.env.get("FACEBRIDGE_DATABASE_URL", "").removeprefix("sqlite:///")
        paths = [
            database,
            self.transformer.get("path", ""),
            self.env.get("FACEBRIDGE_BACKBONE_MANIFEST", ""),
        ]
        paths += [e.image for e in self.examples]
        return all(p and Path(p).is_file() for p in paths)


def fingerprint(source: str, details: dict[str, Any]) -> str:
    payload = json.dumps({"version": STATE_VERSION, "source": source, **details}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def kit_details(kit: Path) -> dict[str, Any]:
    pairs = kit_pairs_path(kit)
    stat = pairs.stat()
    return {"kit": str(kit), "pairs_size": stat.st_size, "pairs_mtime": int(stat.st_mtime)}


def reset_data_dir(data_dir: Path) -> None:
    """Remove a previous demo build, except its ``cache/`` (new_flip: minutes to recompute).

    Refuses a non-empty directory that is not demo data."""
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / STATE_FILE).exists():
        owned = {"models", "synthetic", "gallery", "index", "transformers", "pairs.npz", CACHE_DIR}
        foreign = [
            p.name
            for p in data_dir.iterdir()
            if p.name not in owned and not p.name.startswith((".", "facebridge.", "pairs."))
        ]
        if foreign:
            raise InvalidInput(
                f"{data_dir} holds files the demo did not make ({', '.join(sorted(foreign)[:3])}); "
                "pass an empty or demo directory with --data-dir"
            )
    data_dir.mkdir(parents=True, exist_ok=True)
    for entry in data_dir.iterdir():
        if entry.name == CACHE_DIR and entry.is_dir():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@dataclasses.dataclass(frozen=True)
class FlipCache:
    """``<data-dir>/cache/new_flip.npz``: new_flip per image path, valid for one backbone (by
    the sha256 of its ONNX file) and one image folder; anything else is ignored and replaced."""

    path: Path
    key: str

    @classmethod
    def for_backbone(
        cls, *, cache_dir: Path, images_dir: Path, backbone_manifest: Path
    ) -> FlipCache:
        manifest, onnx_path = load_backbone_manifest(backbone_manifest)
        key = json.dumps(
            {
                "model_id": manifest.model_id,
                "onnx_sha256": file_sha256(onnx_path),
                "images_dir": str(images_dir.resolve()),
            },
            sort_keys=True,
        )
        return cls(path=cache_dir / FLIP_CACHE_FILE, key=key)

    def read(self) -> dict[str, np.ndarray]:
        """image path -> new_flip row; empty when absent, unreadable or made for another key."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["key"]) != self.key:
                    return {}
                paths, vectors = z["path"].astype(str), z["new_flip"].astype(np.float32)
        except (OSError, KeyError, ValueError):
            return {}
        return dict(zip(paths.tolist(), vectors, strict=True))

    def write(self, rows: dict[str, np.ndarray]) -> None:
        with atomic_path(self.path) as tmp:
            np.savez(
                tmp,
                key=np.array(self.key),
                path=np.array(list(rows), dtype=str),
                new_flip=np.stack(list(rows.values())).astype(np.float32),
            )
