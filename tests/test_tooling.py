"""The tooling in ``pyproject.toml`` takes effect: ruff and mypy pass on the tree as it is."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> list[str]:
    """The command that runs ``name`` with this interpreter's installation of it."""
    if importlib.util.find_spec(name) is not None:
        return [sys.executable, "-m", name]
    binary = Path(sys.executable).with_name(name)
    if binary.is_file():
        return [str(binary)]
    pytest.skip(f"{name} is not installed in {sys.prefix} (pip install -e '.[test]')")


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_passes() -> None:
    result = _run([*_tool("ruff"), "check", "kgservice", "tests", "bench"])
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}{result.stderr}"


def test_mypy_passes() -> None:
    result = _run([*_tool("mypy")])
    assert result.returncode == 0, f"mypy failed:\n{result.stdout}{result.stderr}"


def test_the_readme_lists_every_setting() -> None:
    """Each field of ``Settings`` is in the README's settings table as its ``ESI_*`` variable."""
    from dataclasses import fields

    from kgservice.config import Settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("### Settings"):].split("\n\n## ", 1)[0]
    missing = [f.name for f in fields(Settings) if f"`ESI_{f.name.upper()}`" not in table]
    assert not missing, f"README's settings table misses {missing}"
