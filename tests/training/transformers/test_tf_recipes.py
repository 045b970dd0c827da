from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InvalidInput
from training.transformers.recipes import (
    DEFAULT_RECIPE,
    RECIPES,
    get_recipe,
    load_recipe_file,
    recipe_from_dict,
)

STUDY = [
    "study-fc",
    "study-msresnet",
    "study-mlp",
    "study-linear-12",
    "study-sorted-25-mixed",
    "study-sorted-25-pretrain",
    "study-sorted-50-mixed",
    "study-sorted-50-pretrain",
]


def test_registry_has_the_study_grid_and_a_default() -> None:
    for name in [*STUDY, "identity", "ridge", "procrustes", "mlp-scaled", "two-way-mlp", "default"]:
        assert get_recipe(name).name == name
    assert RECIPES["default"] is DEFAULT_RECIPE
    assert get_recipe("study-sorted-25-pretrain").interpolation_rate == 0.25
    assert get_recipe("study-linear-12").interpolation == "linear"


def test_default_is_two_way_ridge_and_the_previous_default_is_kept() -> None:
    d = DEFAULT_RECIPE
    assert (d.model, d.ridge_lambda, d.output_scale) == ("ridge", 0.01, 1.0)
    assert (d.fusion_weight, d.backward_lambda, d.backward_scale) == (0.9, 0.01, 1.3)
    assert d.two_way and d.closed_form
    previous = get_recipe("mlp-scaled")
    assert (previous.model, previous.init, previous.hidden, previous.depth) == (
        "mlp",
        "ridge",
        256,
        2,
    )
    assert (previous.epochs, previous.batch_size, previous.output_scale) == (20, 256, 1.3)
    assert previous.fusion_weight == 1.0 and not previous.two_way
    both = get_recipe("two-way-mlp")
    assert both.replace(name="x", description="") == previous.replace(
        name="x", description="", fusion_weight=0.9, backward_lambda=0.01, backward_scale=1.3
    )
    assert get_recipe("ridge").fusion_weight == 1.0  # registered one-way recipes stay one-way


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("fusion_weight", 0.0, "fusion_weight"),
        ("fusion_weight", 1.01, "fusion_weight"),
        ("fusion_weight", -0.5, "fusion_weight"),
        ("backward_scale", 0.0, "backward_scale"),
        ("backward_lambda", -1e-3, "backward_lambda"),
    ],
)
def test_two_way_fields_are_validated(field: str, value: float, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        recipe_from_dict({"base": "default", field: value})
    assert recipe_from_dict({"base": "default", "fusion_weight": 1.0}).two_way is False


def test_base_plus_override_from_dict() -> None:
    recipe = recipe_from_dict({"base": "study-fc", "epochs": 3, "name": "quick"})
    assert (recipe.name, recipe.epochs, recipe.model) == ("quick", 3, "fc")
    assert recipe_from_dict({"recipe": {"base": "mlp", "hidden": 64}}).hidden == 64


def test_unknown_fields_and_bad_values_are_clear_errors() -> None:
    with pytest.raises(InvalidInput, match="unknown recipe field"):
        recipe_from_dict({"base": "fc", "epoch": 3})
    with pytest.raises(InvalidInput, match="interpolation_rate"):
        recipe_from_dict({"base": "fc", "interpolation": "sorted", "interpolation_rate": 0.9})
    with pytest.raises(InvalidInput, match="unknown recipe"):
        get_recipe("nope")


def test_toml_and_yaml_configs(tmp_path: Path) -> None:
    toml = tmp_path / "r.toml"
    toml.write_text('[recipe]\nbase = "mlp"\nname = "t"\nepochs = 5\n')
    yaml = tmp_path / "r.yaml"
    yaml.write_text("base: study-fc\nlr: 0.01\n")
    assert load_recipe_file(toml).epochs == 5
    assert load_recipe_file(yaml).lr == 0.01
    bad = tmp_path / "r.json"
    bad.write_text("{}")
    with pytest.raises(InvalidInput, match=r"\.toml"):
        load_recipe_file(bad)
