"""The ``facebridge`` command over real subprocesses: a usage mistake is the usage line and one
error line (exit 2), an unexpected error is one line naming the log with the traceback (exit
1); importing the service never imports the training side; plugins come from entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import typer

from service.cli import ENTRY_POINT_GROUP, build_app, load_plugin, merge_groups

REPO = Path(__file__).resolve().parents[2]


def _facebridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_an_unknown_command_is_a_usage_error_without_traceback() -> None:
    result = _facebridge("teleport", "simulate")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Usage: ")
    assert lines[-1] == "Error: No such command 'teleport'."
    assert len(lines) <= 3, result.stderr


def test_an_unexpected_error_is_one_line_and_the_traceback_goes_to_the_log(tmp_path) -> None:
    # Nothing listens on port 1: the database driver's error is not one the CLI knows.
    env = {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "FACEBRIDGE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
    }
    result = _facebridge("db", "current", env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    log = tmp_path / "state" / "facebridge" / "cli-errors.log"
    assert len(lines) == 1 and lines[0].startswith("error: unexpected "), result.stderr
    assert lines[0].endswith(f"(traceback in {log})")
    text = log.read_text()
    assert "facebridge db current" in text and "Traceback (most recent call last)" in text


def test_importing_every_service_module_starts_nothing_and_imports_no_training_no_torch() -> None:
    code = (
        "import importlib, pkgutil, sys, threading\n"
        "import service\n"
        "for info in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    try:\n"
        "        importlib.import_module(info.name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name.split('.')[0] in ('training', 'torch'):\n"
        "            raise\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'torch'))\n"
        "print(bad, threading.active_count())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] 1"  # no training or torch module, no thread started


def test_the_training_commands_come_from_the_entry_point_group() -> None:
    groups = {
        ep.name: ep.value
        for ep in __import__("importlib.metadata").metadata.entry_points(group=ENTRY_POINT_GROUP)
    }
    assert groups["transformer"] == "training.transformers.cli:app"
    app = typer.main.get_command(build_app())
    transformer = app.commands["transformer"]
    assert {"upload", "list", "activate", "rollback", "fit", "evaluate"} <= set(
        transformer.commands
    )
    assert app.commands["transformers"].hidden  # the old spelling, hidden


def test_a_plugin_whose_module_is_absent_is_left_out_and_a_wrong_object_raises() -> None:
    absent = EntryPoint(name="x", value="no_such_module_here.cli:app", group=ENTRY_POINT_GROUP)
    assert load_plugin(absent) is None
    wrong = EntryPoint(name="x", value="service.cli:ENTRY_POINT_GROUP", group=ENTRY_POINT_GROUP)
    with pytest.raises(TypeError):
        load_plugin(wrong)


def test_merging_two_groups_that_define_one_command_twice_is_refused() -> None:
    first, second = typer.Typer(), typer.Typer()
    first.command("fit")(lambda: None)
    second.command("fit")(lambda: None)
    with pytest.raises(RuntimeError, match="defined twice"):
        merge_groups("transformer", [first, second])


def test_without_the_training_side_the_service_groups_remain() -> None:
    # As in the service image: the entry points name training modules that are not there.
    code = (
        "import sys, typer\n"
        "sys.modules['training'] = None  # any import of training fails as if not installed\n"
        "from service.cli import build_app\n"
        "groups = typer.main.get_command(build_app()).commands\n"
        "print(' '.join(sorted(name for name, group in groups.items() if not group.hidden)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["db", "gallery", "keys", "migration", "service", "transformer"]
