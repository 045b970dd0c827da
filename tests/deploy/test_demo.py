"""`facebridge demo build`: the synthetic pipeline end to end (small), the kit demo's examples,
and that the printed curl commands name verified probes. The examples are re-checked here
through the real app, independently of the demo's own verification."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from training.demo import (
    N_EXAMPLES,
    SYNTHETIC_BANNER,
    DemoState,
    SyntheticSpec,
    build_demo,
    curl_commands,
    print_summary,
    settings_from_env,
    synthetic_person_pattern,
    synthetic_view,
)

# Small but still the whole pipeline: two random iResNet-18s (width 8), ~200 images.
SMALL_SPEC = SyntheticSpec(
    bridge_identities=60,
    bridge_images=3,
    eval_identities=6,
    eval_images=3,
    distractors=3,
    width=8,
    embedding_dim=64,
    parity_batches=(1,),
)


def _identify_top1(state: DemoState, images: list[Path]) -> list[str | None]:
    """Top-1 names from the real app (lifespan on) with the demo's settings and key."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from service.app import create_app

    names: list[str | None] = []
    with TestClient(create_app(settings_from_env(state.env))) as client:
        for image in images:
            with open(image, "rb") as fh:
                response = client.post(
                    "/v1/identify",
                    headers={"X-API-Key": state.api_key},
                    files={"image": (image.name, fh, "image/jpeg")},
                )
            assert response.status_code == 200, response.text
            candidates = response.json()["results"][0]["candidates"]
            names.append(candidates[0]["name"] if candidates else None)
    return names


def _check_examples(state: DemoState, *, recheck: bool) -> None:
    gallery = np.load(Path(state.data_dir) / "gallery" / "gallery.npz")
    enrolled = {str(p) for p in gallery["path"]}
    aligned = [e for e in state.examples if e.kind == "aligned"]
    assert len(aligned) == N_EXAMPLES
    assert len({e.expected for e in aligned}) == N_EXAMPLES, "three different people"
    for example in state.examples:
        image = Path(example.image)
        assert image.is_absolute() and image.is_file()
        assert example.expected in set(gallery["name"].astype(str))
        # A probe, not the enrolment template itself.
        assert not any(example.image.endswith("/" + p) for p in enrolled)
    assert all(e.verified for e in state.examples)
    assert N_EXAMPLES <= state.verification["correct"] <= state.verification["tried"]
    photos = [e for e in state.examples if e.kind == "photo"]
    assert len(photos) == min(1, state.verification["photo"]["correct"])
    if recheck:  # independently of the demo's own verification
        found = _identify_top1(state, [Path(e.image) for e in state.examples])
        assert found == [e.expected for e in state.examples]


def test_synthetic_person_views_differ_less_than_people() -> None:
    rng = np.random.default_rng(0)
    a, b = synthetic_person_pattern(rng), synthetic_person_pattern(rng)
    va1, va2 = synthetic_view(a, rng), synthetic_view(a, rng)
    vb = synthetic_view(b, rng)
    assert va1.shape == (112, 112, 3) and va1.dtype == np.uint8

    def dist(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.abs(x.astype(float) - y.astype(float)).mean())

    assert dist(va1, va2) < dist(va1, vb)


@pytest.mark.slow
def test_synthetic_demo_builds_verifies_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "demo-data"
    state = build_demo(data_dir=data_dir, synthetic=True, spec=SMALL_SPEC, progress=False)
    out = capsys.readouterr().out
    assert SYNTHETIC_BANNER in out and "RANDOMLY INITIALISED iResNet" in out
    assert state.source == "synthetic" and state.synthetic
    assert state.transformer["source_model"].startswith("synthetic-new-iresnet-r18")
    assert state.transformer["target_model"].startswith("synthetic-old-iresnet-r18")
    assert state.gallery["imported"] == state.gallery["templates"] + state.gallery["distractors"]
    assert state.gallery["templates"] == SMALL_SPEC.eval_identities
    assert state.gallery["distractors"] == SMALL_SPEC.distractors
    _check_examples(state, recheck=False)  # the kit test re-checks through the app

    # The summary says SYNTHETIC and prints ready-to-paste curl commands with the demo key.
    print_summary(state, host="127.0.0.1", port=8000)
    summary = capsys.readouterr().out
    assert SYNTHETIC_BANNER in summary
    commands = curl_commands(state, host="127.0.0.1", port=8000)
    assert len(commands) == len(state.examples) == N_EXAMPLES  # no photos in synthetic data
    for command, example in zip(commands, state.examples, strict=True):
        assert command in summary and state.api_key in command and example.image in command

    # A second build with the same inputs reuses the data (same key, nothing rebuilt).
    again = build_demo(data_dir=data_dir, synthetic=True, spec=SMALL_SPEC, progress=False)
    assert "up to date" in capsys.readouterr().out
    assert again.api_key == state.api_key and again.timings == state.timings


def test_demo_refuses_a_foreign_directory(tmp_path: Path) -> None:
    from service.errors import InvalidInput

    (tmp_path / "precious.txt").write_text("not demo data")
    with pytest.raises(InvalidInput, match="did not make"):
        build_demo(data_dir=tmp_path, synthetic=True, spec=SMALL_SPEC, progress=False)
    assert (tmp_path / "precious.txt").is_file()


@pytest.mark.kit
@pytest.mark.slow
def test_kit_demo_examples_come_back_as_the_right_person(
    kit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kit demo (default recipe, as `make demo` runs it): real eval probes -> right person."""
    state = build_demo(data_dir=tmp_path / "demo-data", progress=False, quiet=True)
    assert state.source == "kit"
    assert state.gallery["templates"] == 414 and state.gallery["distractors"] == 1017
    for example in state.examples:
        folder = "aligned" if example.kind == "aligned" else "photos"
        assert Path(example.image).is_relative_to(kit_dir / "lfw" / folder)
    try:
        import dlib  # noqa: F401
    except ImportError:
        pass
    else:  # with the detector installed, one full photo is shown too (detected + aligned)
        assert [e.kind for e in state.examples].count("photo") == 1
    _check_examples(state, recheck=True)
    # The command line reuses it and prints the curl commands without serving.
    capsys.readouterr()
    from service.cli import main

    assert main(["demo", "run", "--no-serve", "--data-dir", str(tmp_path / "demo-data")]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out
    assert all(c in out for c in curl_commands(state, host="127.0.0.1", port=8000))
    # The mapped row is reported from the protocol (not hard-coded) and beats chance by far.
    assert state.evaluation["raw cross top1"] < 1.0 < 50.0 < state.evaluation["mapped top1"]
