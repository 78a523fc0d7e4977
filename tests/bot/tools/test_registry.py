"""Loading the tools: the built-ins, then each TOOL_MODULES module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.settings import SettingsError
from bot.tools.registry import default_registry


def test_tool_modules_are_loaded_after_the_built_ins() -> None:
    names = {spec.name for spec in default_registry(["tests.support.slow_tools"])}
    assert {"get_current_time", "wait_seconds", "never_finishes"} <= names


@pytest.fixture
def modules_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("broken_tools", "toolless", "undocumented_tools"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("module", "source", "said"),
    [
        ("no_such_tools", None, "ModuleNotFoundError: No module named 'no_such_tools'"),
        ("broken_tools", "import no_such_dependency\n", "No module named 'no_such_dependency'"),
        ("toolless", "X = 1\n", "declares no @tool function"),
        (
            "undocumented_tools",
            "from bot.tools import tool\n\n@tool\nasync def f() -> str:\n    return ''\n",
            "a docstring is required",
        ),
    ],
)
def test_a_module_that_cannot_be_loaded_is_a_setting_error_naming_tool_modules(
    modules_folder: Path, module: str, source: str | None, said: str
) -> None:
    """The README: a wrong setting stops the start with one line naming it."""
    if source is not None:
        (modules_folder / f"{module}.py").write_text(source)
    with pytest.raises(SettingsError) as caught:
        default_registry([module])
    message = str(caught.value)
    assert message.startswith(f"setting TOOL_MODULES: cannot load {module}: ")
    assert said in message and "\n" not in message
