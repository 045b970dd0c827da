"""The kit assets of the e2e tests: the protocol gallery + probes and two fitted transformers.

Built once per session by the `kit_assets` fixture (tests/e2e/conftest.py) into a tmp dir; the
kit is only read. Each step is its own function so the fixture reads as the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class KitAssets:
    manifest: Path
    aligned_dir: Path
    gallery_npz: Path  # OLD vectors of the eval gallery (templates + distractors)
    gallery_size: int
    probe_paths: list[str]  # relative to aligned_dir
    probe_identities: list[str]  # the external id (= LFW name) each probe should find
    transformers: dict[str, Path]
    offline_top1: dict[str, float]  # protocol evaluation of the same ONNX files, percent


def write_eval_gallery(evaluation: Any, gallery_rows: Any, gallery_npz: Path) -> None:
    """The OLD vectors of the eval gallery rows, in the import format."""
    import numpy as np

    names = evaluation.name
    assert names is not None and evaluation.path is not None
    np.savez(
        gallery_npz,
        old=evaluation.old[gallery_rows],
        external_id=names[gallery_rows],
        name=names[gallery_rows],
        path=evaluation.path[gallery_rows],
    )


def with_probe_flips(evaluation: Any, probe_rows: Any, *, kit_dir: Path, manifest: Path) -> Any:
    """The service flip-averages queries by default: the offline side needs e(mirror(crop)) of
    the probes. Only probe rows are queries; the other rows keep new_flip = new (never read)."""
    from dataclasses import replace

    import numpy as np

    from service.inference.backbone import OnnxBackbone
    from training.data.flip import mirrored_embeddings

    probe_flip, _ = mirrored_embeddings(
        pairs=evaluation.take(probe_rows),
        images_dir=kit_dir / "lfw" / "aligned",
        backbone=OnnxBackbone(manifest),
        progress=False,
    )
    new_flip = np.array(evaluation.new, dtype=np.float32)
    new_flip[probe_rows] = probe_flip
    return replace(evaluation, new_flip=new_flip)


def export_default_transformer(bridge: Any, path: Path) -> Any:
    """The default recipe: two-way (forward + backward map), scored fused by the service, with
    the open-set calibration the fit CLI stores (in-sample here: the rule is what is tested)."""
    from service.contracts import KIT_NEW_MODEL_ID, KIT_OLD_MODEL_ID
    from training.transformers.calibrate import fit_calibrations
    from training.transformers.export import default_metadata, export_transformer
    from training.transformers.fit import fit_transformer

    fitted = fit_transformer(pairs=bridge, recipe="default", progress=False)
    calibrations = fit_calibrations(fitted, bridge, space=KIT_OLD_MODEL_ID, flip=True, folds=0)
    metadata = default_metadata(
        fitted,
        source_model=KIT_NEW_MODEL_ID,
        target_model=KIT_OLD_MODEL_ID,
        calibrations=calibrations,
    )
    export_transformer(fitted, path, metadata=metadata)
    return fitted


def offline_top1(evaluation: Any, path: Path) -> float:
    """The protocol evaluation (flip-averaged queries) of the exported two-way ONNX file."""
    from service.evaluation.protocol import evaluate_mapping, runner_rows
    from service.inference.transformer import TransformerRunner

    runner = TransformerRunner(path)
    assert runner.two_way
    report = evaluate_mapping(
        eval_pairs=evaluation,
        mapped=runner_rows(evaluation, runner=runner, flip=True),
    )
    assert report.queries == "flip-averaged"
    return float(report.row("mapped").top1)


def build_kit_assets(kit_dir: Path, root: Path) -> KitAssets:
    """Everything the kit e2e tests need, written under root."""
    from api.onnx_fixtures import random_rotation, write_matrix_transformer

    from service.contracts import KIT_NEW_MODEL_ID, KIT_OLD_MODEL_ID, load_pairs
    from service.evaluation.protocol import build_gallery_and_probes

    pairs = load_pairs(kit_dir / "lfw" / "pairs.npz")
    bridge, evaluation = pairs.select_split("bridge"), pairs.select_split("eval")
    split = build_gallery_and_probes(evaluation)  # docs/PROTOCOL.md
    gallery_rows, probe_rows = split.gallery_rows, split.probe_rows
    gallery_npz = root / "eval-gallery.npz"
    write_eval_gallery(evaluation, gallery_rows, gallery_npz)
    manifest = kit_dir / "models" / "mobilefacenet.json"
    evaluation = with_probe_flips(evaluation, probe_rows, kit_dir=kit_dir, manifest=manifest)
    default = root / "default.onnx"
    fitted = export_default_transformer(bridge, default)
    top1 = offline_top1(evaluation, default)
    # A second valid version for the hot-swap test only (its accuracy is irrelevant there).
    rotation = write_matrix_transformer(
        root / "rotation.onnx",
        matrix=random_rotation(fitted.input_dim, seed=7),
        source_model=KIT_NEW_MODEL_ID,
        target_model=KIT_OLD_MODEL_ID,
        recipe="random-rotation",
    )
    names = evaluation.name
    return KitAssets(
        manifest=manifest,
        aligned_dir=kit_dir / "lfw" / "aligned",
        gallery_npz=gallery_npz,
        gallery_size=len(gallery_rows),
        probe_paths=[str(p) for p in evaluation.path[probe_rows]],
        probe_identities=[str(n) for n in names[probe_rows]],
        transformers={"default": default, "rotation": rotation},
        offline_top1={"default": top1},
    )
