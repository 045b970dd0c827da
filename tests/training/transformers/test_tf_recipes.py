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
    for name in [*STUDY, "identity", "ridge", "procrustes", "default"]:
        assert get_recipe(name).name == name
    assert RECIPES["default"] is DEFAULT_RECIPE
    assert get_recipe("study-sorted-25-pretrain").interpolation_rate == 0.25
    assert get_recipe("study-linear-12").interpolation == "linear"


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
