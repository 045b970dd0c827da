"""docs/configuration.md is generated from ServiceSettings and must match it exactly."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.settings import ServiceSettings
from service.settings_docs import DOC_PATH, REGENERATE_COMMAND, render_configuration


def test_configuration_doc_is_current() -> None:
    expected = render_configuration()
    current = DOC_PATH.read_text() if DOC_PATH.is_file() else ""
    assert current == expected, (
        f"{DOC_PATH.name} differs from what ServiceSettings generates now; "
        f"regenerate it with: {REGENERATE_COMMAND}"
    )


def test_every_setting_is_documented() -> None:
    undocumented = [n for n, f in ServiceSettings.model_fields.items() if not f.description]
    assert not undocumented, f"ServiceSettings fields without a description: {undocumented}"
    text = render_configuration()
    for name in ServiceSettings.model_fields:
        assert f"`FACEBRIDGE_{name.upper()}`" in text


def test_renderer_on_a_small_settings_class() -> None:
    class Small(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="APP_")

        url: str = Field(default="sqlite:///x.db", description="where | data lives")
        mode: Literal["a", "b"] = Field(default="a", description="the mode")
        key: SecretStr = Field(description="a secret")
        token: SecretStr | None = Field(default=None, description="optional secret")
        flag: bool = Field(default=True, description="a switch")

    rows = [line for line in render_configuration(Small).splitlines() if line.startswith("| `")]
    assert rows == [
        "| `APP_URL` | str | `sqlite:///x.db` | where \\| data lives |",
        '| `APP_MODE` | "a" \\| "b" | `a` | the mode |',
        "| `APP_KEY` | secret string | **required** | a secret |",
        "| `APP_TOKEN` | secret string \\| None | unset | optional secret |",
        "| `APP_FLAG` | bool | `true` | a switch |",
    ]
