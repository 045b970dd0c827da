"""``facebridge demo``: from a fresh clone to a working ``/identify`` in one command.

``demo build`` prepares ``./demo-data/`` (idempotent: a second run with the same inputs reuses
it); ``demo run`` builds, then serves it at http://127.0.0.1:8000 after printing curl commands.

- **Kit present** (``service.kit.find_kit_dir()``): real LFW faces. Gallery = OLD-model (dlib)
  vectors of the kit's ``eval`` identities, built per docs/PROTOCOL.md (first image by path per
  identity, 1-image identities as distractors); backbone = the kit's MobileFaceNet (read in
  place, never copied); transformer fitted on the ``bridge`` split, exported, uploaded and
  activated. Example probes are real aligned eval images of people in the gallery.
  The service flip-averages its queries by default (``FACEBRIDGE_FLIP_AVERAGE_QUERIES``), so the
  demo scores the same way: it adds ``new_flip`` (every kit crop mirrored and embedded,
  :mod:`training.data.flip`) to its copy of the pairs, and the threshold (bridge rows) and the
  eval metrics come from flip-averaged queries. The mirrored embeddings are cached in
  ``<data-dir>/cache/`` (kept by rebuilds): only the first build spends those minutes.
- **No kit** (or ``--synthetic``): a SYNTHETIC data set generated here (coloured-pattern 112x112
  "faces", one pattern family per synthetic person), two randomly initialised iResNet backbones
  standing in for the old and the new model, then the same real pipeline: pairs extraction (with
  ``new_flip``, its default), transformer fit + export, gallery import, upload + activation,
  service.

Before printing anything the demo verifies in-process (the real app, the real HTTP route) that
its example probes come back as the right person. It never downloads anything.
Torch is imported inside the commands only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import typer

from service.contracts import (
    KIT_NEW_MODEL_ID,
    KIT_OLD_MODEL_ID,
    SPLIT_BRIDGE,
    SPLIT_EVAL,
    PairsSet,
    load_backbone_manifest,
    load_pairs,
    save_pairs,
)
from service.errors import InvalidInput
from service.files import atomic_path, file_sha256, write_text_atomically
from service.kit import find_kit_dir, kit_backbone_manifest, kit_pairs_path

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

app = typer.Typer(
    help="Build and serve a ready-to-query demo (kit faces if present, else synthetic data).",
    no_args_is_help=True,
)


# ---------------------------------------------------------------------------------------------
# Synthetic data: a clearly-labelled stand-in for faces when the kit is absent
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """How many synthetic people and images. Bridge people train the transformer; eval people
    with several images give a gallery template + probes; eval people with one image are
    distractors (docs/PROTOCOL.md)."""

    bridge_identities: int = 150
    bridge_images: int = 3
    eval_identities: int = 20
    eval_images: int = 4
    distractors: int = 10
    # iResNet-18 at a quarter of the published width (64): the random stand-ins only need to be
    # real iResNets, and this keeps the synthetic build near two minutes on two CPU cores.
    arch: str = "r18"
    width: int = 16
    embedding_dim: int = 128
    old_seed: int = 1
    new_seed: int = 2
    data_seed: int = 0
    # Export parity batches of the random backbones (1, 7, 256 as for any export; tests use fewer).
    parity_batches: tuple[int, ...] = (1, 7, 256)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def synthetic_person_pattern(rng: np.random.Generator, *, size: int = 112) -> np.ndarray:
    """One synthetic person's base pattern (float32 HxWx3): a background colour plus one grating
    (frequency, orientation). Five numbers per person: two random backbones then see a smooth,
    low-dimensional family that a closed-form transformer can learn to map across from about a
    hundred bridge people (measured here: ridge reaches 80-90% top-1 on unseen people)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    image = np.zeros((size, size, 3), np.float32) + rng.uniform(60, 190, size=3).astype(np.float32)
    freq, theta = rng.uniform(1.5, 4.0), rng.uniform(0, np.pi)
    grating = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)))
    image += (50.0 * grating)[..., None]
    return image


def synthetic_view(pattern: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 'photo' of a synthetic person: shifted by up to 2 px, brightness and pixel noise."""
    dx, dy = rng.integers(-2, 3, size=2)
    image = np.roll(pattern, (int(dy), int(dx)), axis=(0, 1))
    image = image + rng.uniform(-6, 6) + rng.normal(0.0, 4.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_faces(*, root: Path, spec: SyntheticSpec) -> dict[str, str]:
    """Write ``root/<person>/<person>_NNNN.png`` (112x112 RGB). Returns person -> split."""
    from PIL import Image

    rng = np.random.default_rng(spec.data_seed)
    plan: list[tuple[str, int]] = []
    plan += [(SPLIT_BRIDGE, spec.bridge_images)] * spec.bridge_identities
    plan += [(SPLIT_EVAL, spec.eval_images)] * spec.eval_identities
    plan += [(SPLIT_EVAL, 1)] * spec.distractors
    splits: dict[str, str] = {}
    root.mkdir(parents=True, exist_ok=True)
    for index, (split, n_images) in enumerate(plan):
        person = f"synthetic-person-{index:03d}"
        splits[person] = split
        pattern = synthetic_person_pattern(rng)
        (root / person).mkdir(exist_ok=True)
        for j in range(n_images):
            Image.fromarray(synthetic_view(pattern, rng)).save(
                root / person / f"{person}_{j + 1:04d}.png"
            )
    return splits


# ---------------------------------------------------------------------------------------------
# State: what a finished build left in the data directory
# ---------------------------------------------------------------------------------------------
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


def _fingerprint(source: str, details: dict[str, Any]) -> str:
    payload = json.dumps({"version": STATE_VERSION, "source": source, **details}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _kit_details(kit: Path) -> dict[str, Any]:
    pairs = kit_pairs_path(kit)
    stat = pairs.stat()
    return {"kit": str(kit), "pairs_size": stat.st_size, "pairs_mtime": int(stat.st_mtime)}


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
class _Steps:
    """Numbered status lines with timings (long steps show their own progress bars)."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        self._n = 0

    @contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        self._n += 1
        self.say(f"[{self._n}] {text} ...")
        started = time.perf_counter()
        yield
        self.timings[key] = round(time.perf_counter() - started, 2)
        self.say(f"    done in {self.timings[key]:.1f} s")

    def say(self, text: str) -> None:
        if not self.quiet:
            typer.echo(text)


def _limit_threads() -> None:
    """Keep torch/OpenMP to an explicit thread count (:data:`TORCH_THREADS`)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))
    import torch

    torch.set_num_threads(TORCH_THREADS)


def _assign_split(pairs: PairsSet, splits: dict[str, str]) -> PairsSet:
    if pairs.name is None:
        raise InvalidInput("pairs file has no 'name' column; cannot assign the demo split")
    split = np.array([splits[str(n)] for n in pairs.name])
    return dataclasses.replace(pairs, split=split)


def _init_backbone(*, output: Path, spec: SyntheticSpec, seed: int, role: str) -> Path:
    """A randomly initialised iResNet exported to ONNX with its manifest (H3b's export)."""
    from training.backbones.config import TrainConfig
    from training.backbones.export import export_random_backbone

    config = TrainConfig(arch=spec.arch, width=spec.width, embedding_dim=spec.embedding_dim)  # type: ignore[arg-type]
    report = export_random_backbone(
        output,
        seed=seed,
        config=config,
        model_id=f"synthetic-{role}-iresnet-{spec.arch}-w{spec.width}-seed{seed}",
        parity_batches=spec.parity_batches,
    )
    return Path(report.manifest_path)


def fit_recipe(
    *,
    pairs_path: Path,
    output: Path,
    recipe: str,
    source_model: str = KIT_NEW_MODEL_ID,
    target_model: str = KIT_OLD_MODEL_ID,
    progress: bool = False,
) -> Path:
    """``facebridge transformer fit`` as the demo runs it: fit ``recipe`` on the bridge rows,
    threshold at FAR=1e-3 on them, export, validate (and the eval-split metrics inside)."""
    from training.transformers.cli import fit_command

    fit_command(
        pairs=[pairs_path],
        output=output,
        recipe=recipe,
        seed=DEMO_SEED,
        source_model=source_model,
        target_model=target_model,
        progress=progress,
    )
    return output


def _fit_and_export(
    *,
    pairs_path: Path,
    output: Path,
    recipe: str,
    source_model: str,
    target_model: str,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``facebridge transformer fit`` (fit on the bridge rows, threshold, export, validate),
    then the protocol's evaluation of the exported ONNX on the eval rows (docs/PROTOCOL.md)."""
    from service.inference.transformer import TransformerSession
    from training.transformers.cli import evaluate_artefact

    fit_recipe(
        pairs_path=pairs_path,
        output=output,
        recipe=recipe,
        source_model=source_model,
        target_model=target_model,
        progress=progress,
    )
    report = evaluate_artefact(pairs_path=pairs_path, transformer_path=output, all_rows=False)
    session = TransformerSession(output)
    meta = session.metadata
    info = {
        "path": str(output),
        "recipe": meta.recipe,
        "sha256": session.sha256,
        "source_model": meta.source_model,
        "target_model": meta.target_model,
        "threshold": meta.threshold,
        "fit_seconds": meta.metrics.get("fit_seconds"),
        # "flip-averaged" when the pairs carry new_flip (how the service queries by default)
        "queries": getattr(report, "queries", None),
    }
    return info, _report_metrics(report)


def _report_metrics(report: Any) -> dict[str, Any]:
    """top-1 of every protocol row (``{"old/old top1": 93.93, ...}``), for printing."""
    return {
        f"{name} top1": round(float(row.top1), 2)
        for name, row in report.rows.items()
        if row.top1 is not None
    }


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
def _reset_data_dir(data_dir: Path) -> None:
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


# ---------------------------------------------------------------------------------------------
# new_flip: the kit's mirrored crops, embedded once and cached across rebuilds
# ---------------------------------------------------------------------------------------------
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


def cached_new_flip(
    *,
    pairs: PairsSet,
    images_dir: Path,
    backbone_manifest: Path,
    cache_dir: Path,
    progress: bool,
) -> tuple[np.ndarray, int]:
    """new_flip for every row of ``pairs`` (``facebridge pairs add-flip``'s computation) and how
    many rows were embedded now: rows already in the cache are reused, the others computed and
    added to it."""
    from service.inference.backbone import OnnxBackbone
    from training.data.flip import mirrored_embeddings

    if pairs.path is None:
        raise InvalidInput("the demo needs a 'path' column in the pairs file")
    cache = FlipCache.for_backbone(
        cache_dir=cache_dir, images_dir=images_dir, backbone_manifest=backbone_manifest
    )
    known = cache.read()
    paths = pairs.path.astype(str)
    missing = np.array([i for i, p in enumerate(paths.tolist()) if p not in known], np.int64)
    if missing.size:
        backbone = OnnxBackbone(backbone_manifest, intra_op_threads=TORCH_THREADS)
        computed, _ = mirrored_embeddings(
            pairs=pairs.take(missing), images_dir=images_dir, backbone=backbone, progress=progress
        )
        known.update(zip(paths[missing].tolist(), computed, strict=True))
        cache.write(known)
    return np.stack([known[p] for p in paths.tolist()]), int(missing.size)


def build_demo(
    *,
    data_dir: Path = DEFAULT_DATA_DIR,
    synthetic: bool = False,
    spec: SyntheticSpec | None = None,
    recipe: str = DEMO_RECIPE,
    progress: bool = True,
    force: bool = False,
    quiet: bool = False,
) -> DemoState:
    """Build (or reuse) the demo data in ``data_dir``; returns its verified state."""
    data_dir = data_dir.resolve()
    kit = None if synthetic else find_kit_dir()
    spec = spec or SyntheticSpec()
    source = "synthetic" if kit is None else "kit"
    details = _kit_details(kit) if kit is not None else {"spec": spec.as_dict()}
    details["recipe"] = recipe
    # demo data built before the open-set rule (issue 9): no calibration, no face check setting
    details["open_set"] = 1
    fingerprint = _fingerprint(source, details)
    steps = _Steps(quiet=quiet)

    existing = DemoState.load(data_dir / STATE_FILE)
    if (
        not force
        and existing is not None
        and existing.fingerprint == fingerprint
        and existing.data_dir == str(data_dir)
        and all(e.verified for e in existing.examples)
        and existing.files_present()
    ):
        steps.say(f"demo data in {data_dir} is up to date ({source}); reusing it")
        return existing

    if kit is None:
        steps.say("")
        steps.say("=" * 72)
        steps.say(
            f"  {SYNTHETIC_BANNER}: "
            + ("--synthetic given." if synthetic else "the sample kit is absent.")
        )
        steps.say("  Generated coloured-pattern 'faces' and RANDOMLY INITIALISED iResNet backbones")
        steps.say("  stand in for real faces and trained models. The pipeline is the real one;")
        steps.say("  the accuracy figures say nothing about real faces.")
        steps.say("=" * 72)
    else:
        steps.say(f"using the sample kit at {kit} (real LFW faces, read in place)")

    _reset_data_dir(data_dir)
    _limit_threads()
    models_dir = data_dir / "models"
    models_dir.mkdir()

    if kit is None:
        images_dir = data_dir / "synthetic" / "aligned"
        with steps.step("images", f"generating synthetic faces into {images_dir}"):
            splits = write_synthetic_faces(root=images_dir, spec=spec)
        with steps.step(
            "backbones", f"initialising two random iResNet-{spec.arch[1:]} backbones (old, new)"
        ):
            old_manifest = _init_backbone(
                output=models_dir / "old-model.onnx", spec=spec, seed=spec.old_seed, role="old"
            )
            new_manifest = _init_backbone(
                output=models_dir / "new-model.onnx", spec=spec, seed=spec.new_seed, role="new"
            )
        with steps.step("pairs", "extracting old/new embedding pairs"):
            from training.data.extract import extract_pairs

            pairs_path = data_dir / "pairs.npz"
            extract_pairs(
                images_dir=images_dir,
                old=str(old_manifest),
                new=str(new_manifest),
                output=pairs_path,
                aligned=True,
                threads=TORCH_THREADS,
                progress=progress,
            )
            pairs = _assign_split(load_pairs(pairs_path), splits)
            save_pairs(pairs_path, pairs)
            flips_computed = len(pairs)  # extraction writes new_flip (its default)
        old_model_id = load_backbone_manifest(old_manifest)[0].model_id
        backbone_manifest = new_manifest
        new_model_id = load_backbone_manifest(new_manifest)[0].model_id
        image_root, photo_root = images_dir, None
    else:
        pairs = load_pairs(kit_pairs_path(kit))
        backbone_manifest = kit_backbone_manifest(kit)
        old_model_id, new_model_id = KIT_OLD_MODEL_ID, KIT_NEW_MODEL_ID
        image_root, photo_root = kit / "lfw" / "aligned", kit / "lfw" / "photos"
        cache_dir = data_dir / CACHE_DIR
        with steps.step(
            "new_flip",
            f"embedding the mirrored crops of the {len(pairs)} kit rows (new_flip: the service "
            "flip-averages its queries)",
        ):
            new_flip, flips_computed = cached_new_flip(
                pairs=pairs,
                images_dir=image_root,
                backbone_manifest=backbone_manifest,
                cache_dir=cache_dir,
                progress=progress,
            )
        steps.say(
            f"    {flips_computed} embedded now, {len(pairs) - flips_computed} from {cache_dir}"
        )
        pairs = dataclasses.replace(pairs, new_flip=new_flip)
        pairs_path = save_pairs(data_dir / "pairs.npz", pairs)
    flip_info = {} if pairs.new_flip is None else {"rows": len(pairs), "computed": flips_computed}

    n_bridge = len(pairs.select_split(SPLIT_BRIDGE))
    eval_pairs = pairs.select_split(SPLIT_EVAL)
    transformer_path = models_dir / "transformer.onnx"
    with steps.step(
        "fit", f"fitting the transformer (recipe {recipe!r}) on {n_bridge} bridge rows"
    ):
        transformer, metrics = _fit_and_export(
            pairs_path=pairs_path,
            output=transformer_path,
            recipe=recipe,
            source_model=new_model_id,
            target_model=old_model_id,
            progress=progress,
        )
    steps.say(
        f"    eval split (PROTOCOL.md; {transformer.get('queries')} queries): "
        + ", ".join(f"{k}={v}" for k, v in metrics.items())
    )

    env = service_env(
        data_dir=data_dir,
        backbone_manifest=backbone_manifest,
        gallery_model_id=old_model_id,
        synthetic=kit is None,
    )
    with steps.step(
        "service", "creating the database, importing the gallery, uploading the transformer"
    ):
        api_key, console_key, gallery_counts, probes = _prepare_service(
            env=env, data_dir=data_dir, eval_pairs=eval_pairs, transformer_path=transformer_path
        )

    with steps.step("verify", "verifying example probes through the real /identify route"):
        candidates = [
            DemoExample(image=str((image_root / path).resolve()), expected=name)
            for name, path in probes[:MAX_EXAMPLE_CANDIDATES]
        ]
        photo_candidates = (
            []
            if photo_root is None
            else [
                DemoExample(image=str((photo_root / path).resolve()), expected=name, kind="photo")
                for name, path in probes[:N_EXAMPLES]
                if (photo_root / path).is_file()
            ]
        )
        examples, verification = _verify_examples(
            env=env, api_key=api_key, candidates=candidates, photo_candidates=photo_candidates
        )
    steps.say(
        f"    {verification['correct']}/{verification['tried']} aligned probes tried came back as "
        f"the right person ({verification['matched']} above the decision threshold)"
        + (
            f"; full photos: {verification['photo']['correct']}/{verification['photo']['tried']}"
            if verification["photo"]["tried"]
            else ""
        )
    )

    state = DemoState(
        version=STATE_VERSION,
        source=source,
        fingerprint=fingerprint,
        data_dir=str(data_dir),
        env=env,
        api_key=api_key,
        console_key=console_key,
        transformer=transformer,
        evaluation=metrics,
        gallery=gallery_counts,
        examples=examples,
        verification=verification,
        timings=steps.timings,
        new_flip=flip_info,
    )
    state.save(data_dir / STATE_FILE)
    return state


# ---------------------------------------------------------------------------------------------
# Service side (H4a's settings, db, gallery, registry and keys; H4b's app)
# ---------------------------------------------------------------------------------------------
def service_env(
    *, data_dir: Path, backbone_manifest: Path, gallery_model_id: str, synthetic: bool = False
) -> dict[str, str]:
    """The FACEBRIDGE_* environment of the demo service: embedded SQLite + local FAISS index.

    SYNTHETIC demo data are patterns, not faces: the face check is off for them."""
    return {
        "FACEBRIDGE_DATABASE_URL": f"sqlite:///{data_dir / 'facebridge.db'}",
        "FACEBRIDGE_DATA_DIR": str(data_dir),
        "FACEBRIDGE_INDEX_PATH": str(data_dir / "index" / "gallery.faiss"),
        "FACEBRIDGE_TRANSFORMERS_DIR": str(data_dir / "transformers"),
        "FACEBRIDGE_BACKBONE_MANIFEST": str(backbone_manifest),
        "FACEBRIDGE_GALLERY_MODEL_ID": gallery_model_id,
        # Demo probes are aligned 112x112 crops: no detector needed (photos need the dlib extra).
        "FACEBRIDGE_DETECTOR": "auto",
        "FACEBRIDGE_FACE_CHECK": "off" if synthetic else "auto",
    }


def settings_from_env(env: dict[str, str]) -> Any:
    """ServiceSettings from a FACEBRIDGE_* mapping (the same values the served app reads)."""
    from service.settings import ServiceSettings

    prefix = "FACEBRIDGE_"
    return ServiceSettings(
        **{k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
    )


def gallery_and_probes(pairs: PairsSet) -> tuple[PairsSet, dict[str, int], list[tuple[str, str]]]:
    """Gallery rows (templates + distractors), their counts, and (name, path) probes, per
    docs/PROTOCOL.md (:func:`service.evaluation.protocol.build_gallery_and_probes` decides)."""
    from service.evaluation.protocol import build_gallery_and_probes

    split = build_gallery_and_probes(pairs)
    gallery = pairs.take(np.asarray(split.gallery_rows))
    if pairs.name is None or pairs.path is None:
        raise InvalidInput("the demo needs 'name' and 'path' columns in the pairs file")
    # One probe per person first (sorted by path), so the examples show different people.
    seen: set[str] = set()
    first, rest = [], []
    for row in sorted(np.asarray(split.probe_rows).tolist(), key=lambda r: str(pairs.path[r])):
        name, path = str(pairs.name[row]), str(pairs.path[row])
        (rest if name in seen else first).append((name, path))
        seen.add(name)
    return gallery, split.counts(), first + rest


def _prepare_service(
    *, env: dict[str, str], data_dir: Path, eval_pairs: PairsSet, transformer_path: Path
) -> tuple[str, str, dict[str, int], list[tuple[str, str]]]:
    """Migrate the database, import the gallery, upload + activate the transformer and create
    an identify key and an admin key (the console's): the functions behind `facebridge db
    upgrade`, `gallery import`, `transformer upload --activate` and `keys create`."""
    from service.commands import db_upgrade, gallery_import, keys_create
    from service.registry.commands import transformer_upload

    settings = settings_from_env(env)
    gallery, counts, probes = gallery_and_probes(eval_pairs)
    gallery_file = data_dir / "gallery" / "gallery.npz"
    gallery_file.parent.mkdir(parents=True, exist_ok=True)
    assert gallery.name is not None and gallery.path is not None  # checked in gallery_and_probes
    np.savez(
        gallery_file,
        old=np.asarray(gallery.old, dtype=np.float32),
        name=gallery.name.astype(str),
        path=gallery.path.astype(str),
    )
    db_upgrade(settings=settings)
    report = gallery_import(
        path=gallery_file, settings=settings, model_id=settings.gallery_model_id
    )
    transformer_upload(
        path=transformer_path, settings=settings, activate=True, note="facebridge demo"
    )
    _, api_key = keys_create(scopes=["identify"], name="demo", settings=settings)
    _, console_key = keys_create(scopes=["admin"], name="demo console", settings=settings)
    counts["imported"] = int(report.rows)
    return api_key, console_key, counts, probes


def _first_correct(
    client: Any, *, api_key: str, candidates: list[DemoExample], wanted: int
) -> tuple[list[DemoExample], dict[str, Any]]:
    """POST every candidate to /v1/identify; keep ``wanted`` whose top-1 candidate is the right
    person, preferring those whose score also clears the decision threshold (``match`` set)."""
    correct: list[DemoExample] = []
    failures: list[str] = []
    for example in candidates:
        with open(example.image, "rb") as fh:
            response = client.post(
                "/v1/identify",
                headers={"X-API-Key": api_key},
                files={"image": (Path(example.image).name, fh, "application/octet-stream")},
            )
        if response.status_code != 200:
            failures.append(f"{example.image}: HTTP {response.status_code} {response.text[:200]}")
            continue
        result = response.json()["results"][0]
        ranked, match = result["candidates"], result["match"]
        top = ranked[0]["name"] if ranked else None
        if top == example.expected:
            matched = match is not None and match["name"] == example.expected
            correct.append(dataclasses.replace(example, verified=True, matched=matched))
        else:
            failures.append(f"{Path(example.image).name}: expected {example.expected}, got {top}")
    chosen = sorted(correct, key=lambda e: not e.matched)[:wanted]  # stable: path order kept
    stats = {
        "tried": len(candidates),
        "correct": len(correct),
        "matched": sum(e.matched for e in correct),
        "failures": failures,
    }
    return chosen, stats


def _verify_examples(
    *,
    env: dict[str, str],
    api_key: str,
    candidates: list[DemoExample],
    photo_candidates: list[DemoExample],
) -> tuple[list[DemoExample], dict[str, Any]]:
    """Through the real app (in-process, lifespan on): N_EXAMPLES aligned probes must come back
    as the right person; one full photo (detection + alignment in the service) is a bonus shown
    only when it does too (it needs the dlib detector of the [detect] extra)."""
    import warnings

    with warnings.catch_warnings():  # starlette's note about httpx, printed at import
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from service.app import create_app
    from service.startup import wait_until_started

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per in-process request
    app = create_app(settings_from_env(env))
    with TestClient(app) as client:
        wait_until_started(app, timeout=600)  # the lifespan returns first; loading follows
        verified, stats = _first_correct(
            client, api_key=api_key, candidates=candidates, wanted=N_EXAMPLES
        )
        photos, photo_stats = _first_correct(
            client, api_key=api_key, candidates=photo_candidates, wanted=1
        )
    if len(verified) < N_EXAMPLES:
        raise InvalidInput(
            f"demo verification failed: only {len(verified)} of {stats['tried']} example probes "
            "came back as the right person; " + "; ".join(stats["failures"][:3])
        )
    return verified + photos, {**stats, "photo": photo_stats}


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
DataDirOption = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="where the demo data lives")
SyntheticOption = typer.Option(
    False, "--synthetic", help="use synthetic data even if the kit exists"
)
ForceOption = typer.Option(False, "--force", help="rebuild even when the demo data is up to date")
RecipeOption = typer.Option(
    DEMO_RECIPE, "--recipe", help="transformer recipe (see docs/training.md)"
)


def curl_commands(state: DemoState, *, host: str, port: int) -> list[str]:
    base = f"http://{host}:{port}"
    return [
        f"curl -s -H 'X-API-Key: {state.api_key}' -F 'image=@{e.image}' {base}/v1/identify"
        " | python3 -m json.tool"
        for e in state.examples
        if e.verified
    ]


def print_summary(
    state: DemoState,
    *,
    host: str,
    port: int,
    serving: bool = True,
    echo: Callable[[str], None] = typer.echo,
) -> None:
    banner = (
        f"  *** {SYNTHETIC_BANNER} (generated patterns, random backbones) ***"
        if state.synthetic
        else ""
    )
    echo("")
    echo("=" * 72)
    echo(f"facebridge demo ({state.source})" + (banner and "\n" + banner))
    echo(f"  data:        {state.data_dir}")
    g = state.gallery
    echo(
        f"  gallery:     {g.get('imported')} old-model vectors ({g.get('templates')} enrolment "
        f"templates + {g.get('distractors')} distractors); {g.get('probes')} eval probes"
    )
    info = state.transformer
    echo(
        f"  transformer: recipe {info.get('recipe')!r}, "
        f"{info.get('source_model')} -> {info.get('target_model')}"
    )
    queries = info.get("queries")
    echo(
        "  eval split:  "
        + (f"({queries} queries) " if queries else "")
        + ", ".join(f"{k}={v}" for k, v in state.evaluation.items())
    )
    echo(f"  API key (identify scope, demo only): {state.api_key}")
    echo(f"  console:     http://{host}:{port}/console")
    echo(f"               sign in with the admin key (demo only): {state.console_key}")
    echo(f"  docs:        http://{host}:{port}/docs (offline)")
    echo("")
    if serving:
        echo("Try it in another terminal once the server below says 'Application startup complete'")
        echo("(each image is a probe of a person in the gallery, not the enrolled image):")
    else:
        echo("Start the service with `facebridge demo run` (or `make demo`), then try")
        echo("(each image is a probe of a person in the gallery, not the enrolled image):")
    for example, command in zip(
        (e for e in state.examples if e.verified),
        curl_commands(state, host=host, port=port),
        strict=True,
    ):
        notes = ["a full photo: the service detects and aligns the face"] * (
            example.kind == "photo"
        )
        notes.append(
            "top candidate, above the decision threshold, so also `match`"
            if example.matched
            else "top candidate; below the decision threshold, so `match` is null"
        )
        echo(f"  # expected: {example.expected} ({'; '.join(notes)})")
        echo(f"  {command}")
    echo("=" * 72)


@app.command("build")
def build_command(
    data_dir: Path = DataDirOption,
    synthetic: bool = SyntheticOption,
    force: bool = ForceOption,
    recipe: str = RecipeOption,
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
) -> None:
    """Prepare the demo data (idempotent) and verify it; does not start the service."""
    state = build_demo(
        data_dir=data_dir,
        synthetic=synthetic,
        force=force,
        recipe=recipe,
        progress=not no_progress,
    )
    print_summary(state, host=DEFAULT_HOST, port=DEFAULT_PORT, serving=False)


@app.command("run")
def run_command(
    host: str = typer.Option(DEFAULT_HOST, "--host"),
    port: int = typer.Option(DEFAULT_PORT, "--port"),
    data_dir: Path = DataDirOption,
    synthetic: bool = SyntheticOption,
    force: bool = ForceOption,
    recipe: str = RecipeOption,
    no_serve: bool = typer.Option(False, "--no-serve", help="build and verify only"),
) -> None:
    """Build the demo data if needed, print curl commands, then serve until Ctrl-C."""
    state = build_demo(data_dir=data_dir, synthetic=synthetic, force=force, recipe=recipe)
    print_summary(state, host=host, port=port, serving=not no_serve)
    if no_serve:
        return
    serve(state, host=host, port=port)


def serve(state: DemoState, *, host: str, port: int) -> None:
    """`facebridge service run` (uvicorn + the app factory, as in the Docker image) with the
    demo's FACEBRIDGE_* settings in the environment."""
    from service.commands import serve_run

    os.environ.update(state.env)
    typer.echo(f"starting the service at http://{host}:{port} (Ctrl-C stops it) ...")
    serve_run(host=host, port=port, workers=1)
