"""``build_demo``: the demo's steps in order (inputs from the kit or synthetic, fit, service,
verification), or the previous build when it is still up to date."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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
from service.kit import find_kit_dir, kit_backbone_manifest, kit_pairs_path
from training.demo.fitting import (
    Steps,
    assign_split,
    cached_new_flip,
    fit_and_export,
    limit_threads,
)
from training.demo.service_side import prepare_service, service_env, verify_examples
from training.demo.state import (
    CACHE_DIR,
    DEFAULT_DATA_DIR,
    DEMO_RECIPE,
    MAX_EXAMPLE_CANDIDATES,
    N_EXAMPLES,
    STATE_FILE,
    STATE_VERSION,
    SYNTHETIC_BANNER,
    TORCH_THREADS,
    DemoExample,
    DemoState,
    fingerprint,
    kit_details,
    reset_data_dir,
)
from training.demo.synthetic import SyntheticSpec, init_backbone, write_synthetic_faces


@dataclasses.dataclass(frozen=True)
class DemoInputs:
    """What the fit and the service start from: the pairs (with new_flip), the new model's
    manifest, both models' ids and where the probe images (and kit photos) are."""

    pairs: PairsSet
    pairs_path: Path
    backbone_manifest: Path
    old_model_id: str
    new_model_id: str
    image_root: Path
    photo_root: Path | None
    flips_computed: int


def _announce(steps: Steps, *, kit: Path | None, synthetic: bool) -> None:
    if kit is not None:
        steps.say(f"using the sample kit at {kit} (real LFW faces, read in place)")
        return
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


def _synthetic_inputs(
    *, data_dir: Path, models_dir: Path, spec: SyntheticSpec, steps: Steps, progress: bool
) -> DemoInputs:
    """Synthetic faces, two random backbones, then the real pairs extraction (with new_flip)."""
    from training.data.extract import extract_pairs

    images_dir = data_dir / "synthetic" / "aligned"
    with steps.step("images", f"generating synthetic faces into {images_dir}"):
        splits = write_synthetic_faces(root=images_dir, spec=spec)
    with steps.step(
        "backbones", f"initialising two random iResNet-{spec.arch[1:]} backbones (old, new)"
    ):
        old_manifest = init_backbone(
            output=models_dir / "old-model.onnx", spec=spec, seed=spec.old_seed, role="old"
        )
        new_manifest = init_backbone(
            output=models_dir / "new-model.onnx", spec=spec, seed=spec.new_seed, role="new"
        )
    with steps.step("pairs", "extracting old/new embedding pairs"):
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
        pairs = assign_split(load_pairs(pairs_path), splits)
        save_pairs(pairs_path, pairs)
    return DemoInputs(
        pairs=pairs,
        pairs_path=pairs_path,
        backbone_manifest=new_manifest,
        old_model_id=load_backbone_manifest(old_manifest)[0].model_id,
        new_model_id=load_backbone_manifest(new_manifest)[0].model_id,
        image_root=images_dir,
        photo_root=None,
        flips_computed=len(pairs),  # extraction writes new_flip (its default)
    )


def _kit_inputs(*, kit: Path, data_dir: Path, steps: Steps, progress: bool) -> DemoInputs:
    """The kit's pairs and MobileFaceNet, plus new_flip (embedded once, then cached)."""
    pairs = load_pairs(kit_pairs_path(kit))
    backbone_manifest = kit_backbone_manifest(kit)
    image_root = kit / "lfw" / "aligned"
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
    steps.say(f"    {flips_computed} embedded now, {len(pairs) - flips_computed} from {cache_dir}")
    pairs = dataclasses.replace(pairs, new_flip=new_flip)
    return DemoInputs(
        pairs=pairs,
        pairs_path=save_pairs(data_dir / "pairs.npz", pairs),
        backbone_manifest=backbone_manifest,
        old_model_id=KIT_OLD_MODEL_ID,
        new_model_id=KIT_NEW_MODEL_ID,
        image_root=image_root,
        photo_root=kit / "lfw" / "photos",
        flips_computed=flips_computed,
    )


def _fit(
    steps: Steps, inputs: DemoInputs, *, transformer_path: Path, recipe: str, progress: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    n_bridge = len(inputs.pairs.select_split(SPLIT_BRIDGE))
    with steps.step(
        "fit", f"fitting the transformer (recipe {recipe!r}) on {n_bridge} bridge rows"
    ):
        transformer, metrics = fit_and_export(
            pairs_path=inputs.pairs_path,
            output=transformer_path,
            recipe=recipe,
            source_model=inputs.new_model_id,
            target_model=inputs.old_model_id,
            progress=progress,
        )
    steps.say(
        f"    eval split (PROTOCOL.md; {transformer.get('queries')} queries): "
        + ", ".join(f"{k}={v}" for k, v in metrics.items())
    )
    return transformer, metrics


def _verify(
    steps: Steps,
    inputs: DemoInputs,
    *,
    env: dict[str, str],
    api_key: str,
    probes: list[tuple[str, str]],
) -> tuple[list[DemoExample], dict[str, Any]]:
    """The example probes through the real /identify route (kit photos too, when present)."""
    image_root, photo_root = inputs.image_root, inputs.photo_root
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
        examples, verification = verify_examples(
            env=env, api_key=api_key, candidates=candidates, photo_candidates=photo_candidates
        )
    photo = verification["photo"]
    steps.say(
        f"    {verification['correct']}/{verification['tried']} aligned probes tried came back as "
        f"the right person ({verification['matched']} above the decision threshold)"
        + (f"; full photos: {photo['correct']}/{photo['tried']}" if photo["tried"] else "")
    )
    return examples, verification


def _reusable(existing: DemoState | None, *, fingerprint: str, data_dir: Path) -> bool:
    return (
        existing is not None
        and existing.fingerprint == fingerprint
        and existing.data_dir == str(data_dir)
        and all(e.verified for e in existing.examples)
        and existing.files_present()
    )


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
    details = kit_details(kit) if kit is not None else {"spec": spec.as_dict()}
    details["recipe"] = recipe
    # demo data built before the open-set rule (issue 9): no calibration, no face check setting
    details["open_set"] = 1
    build_key = fingerprint(source, details)
    steps = Steps(quiet=quiet)
    existing = DemoState.load(data_dir / STATE_FILE)
    if not force and _reusable(existing, fingerprint=build_key, data_dir=data_dir):
        assert existing is not None
        steps.say(f"demo data in {data_dir} is up to date ({source}); reusing it")
        return existing

    _announce(steps, kit=kit, synthetic=synthetic)
    reset_data_dir(data_dir)
    limit_threads()
    models_dir = data_dir / "models"
    models_dir.mkdir()
    if kit is None:
        inputs = _synthetic_inputs(
            data_dir=data_dir, models_dir=models_dir, spec=spec, steps=steps, progress=progress
        )
    else:
        inputs = _kit_inputs(kit=kit, data_dir=data_dir, steps=steps, progress=progress)
    pairs = inputs.pairs
    flip_info = (
        {} if pairs.new_flip is None else {"rows": len(pairs), "computed": inputs.flips_computed}
    )
    transformer_path = models_dir / "transformer.onnx"
    transformer, metrics = _fit(
        steps, inputs, transformer_path=transformer_path, recipe=recipe, progress=progress
    )
    env = service_env(
        data_dir=data_dir,
        backbone_manifest=inputs.backbone_manifest,
        gallery_model_id=inputs.old_model_id,
        synthetic=kit is None,
    )
    with steps.step(
        "service", "creating the database, importing the gallery, uploading the transformer"
    ):
        api_key, console_key, gallery_counts, probes = prepare_service(
            env=env,
            data_dir=data_dir,
            eval_pairs=pairs.select_split(SPLIT_EVAL),
            transformer_path=transformer_path,
        )
    examples, verification = _verify(steps, inputs, env=env, api_key=api_key, probes=probes)
    state = DemoState(
        version=STATE_VERSION,
        source=source,
        fingerprint=build_key,
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
