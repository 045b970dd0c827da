"""Where the sample kit (real LFW faces + models) lives, if anywhere. Read-only, never copied."""

from __future__ import annotations

import os
from pathlib import Path

KIT_ENV = "FACEBRIDGE_KIT_DIR"


def find_kit_dir() -> Path | None:
    """The kit directory from ``FACEBRIDGE_KIT_DIR`` or ``../shared/kit`` beside the repo.

    Returns None when absent; callers say so clearly and fall back to synthetic data.
    """
    candidates: list[Path] = []
    if os.environ.get(KIT_ENV):
        candidates.append(Path(os.environ[KIT_ENV]))
    repo_root = Path(__file__).resolve().parent.parent
    candidates += [repo_root.parent / "shared" / "kit", Path.cwd().parent / "shared" / "kit"]
    for candidate in candidates:
        if (candidate / "lfw" / "pairs.npz").is_file():
            return candidate.resolve()
    return None


def kit_pairs_path(kit_dir: Path) -> Path:
    return kit_dir / "lfw" / "pairs.npz"


def kit_backbone_manifest(kit_dir: Path) -> Path:
    return kit_dir / "models" / "mobilefacenet.json"
