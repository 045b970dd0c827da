"""The one TOML/YAML config reader shared by recipes, experiments and backbone training."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InvalidInput
from training.config_files import read_config_mapping


def test_reads_toml_and_yaml_alike(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('base = "mlp"\nepochs = 3\n')
    (tmp_path / "a.yaml").write_text("base: mlp\nepochs: 3\n")
    assert read_config_mapping(tmp_path / "a.toml") == {"base": "mlp", "epochs": 3}
    assert read_config_mapping(tmp_path / "a.yaml") == read_config_mapping(tmp_path / "a.toml")
    (tmp_path / "empty.yml").write_text("")
    assert read_config_mapping(tmp_path / "empty.yml") == {}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.json", "{}", "must be .toml, .yaml or .yml"),
        ("bad.toml", "epochs = = 3", "unreadable recipe config"),
        ("bad.yaml", "a: [1, 2", "unreadable recipe config"),
        ("list.yaml", "- 1\n- 2\n", "must hold a table/mapping"),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(InvalidInput, match=message):
        read_config_mapping(tmp_path / name, what="recipe config")
    with pytest.raises(InvalidInput, match="recipe config not found"):
        read_config_mapping(tmp_path / "missing.toml", what="recipe config")
