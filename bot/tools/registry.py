"""The @tool decorator and the registry the engine offers the model.

A tool is a plain function with type hints and a docstring. Its JSON schema comes from a
pydantic model built from the signature, so the arguments the model sends are validated by
the same model that describes them.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, create_model

from bot.settings import SettingsError

log = logging.getLogger(__name__)

ToolFunction = Callable[..., Any]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    function: ToolFunction
    arguments: type[BaseModel]
    timeout: float | None = None  # None: TOOL_TIMEOUT_SECONDS
    rerun_safe: bool = False  # may run again after a restart interrupted it
    admin_only: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)  # plain words per language

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    def label(self, language: str) -> str:
        return self.labels.get(language) or self.labels.get("en") or self.name.replace("_", " ")

    @cached_property
    def openai_schema(self) -> dict[str, Any]:
        """Built once: it is sent with every LLM call."""
        parameters = self.arguments.model_json_schema()
        parameters.pop("title", None)
        for prop in parameters.get("properties", {}).values():
            prop.pop("title", None)
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }


def _arguments_model(function: ToolFunction) -> type[BaseModel]:
    hints = get_type_hints(function)
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"tool {function.__name__}: *args/**kwargs cannot be described")
        annotation = hints.get(name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[name] = (annotation, default)
    model: type[BaseModel] = create_model(
        f"{function.__name__}_arguments",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    return model


# Tools declared with @tool at import time land here; a Registry picks them up by module.
_declared: dict[str, ToolSpec] = {}


F = TypeVar("F", bound=ToolFunction)


@overload
def tool(function: F) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    timeout: float | None = None,
    rerun_safe: bool = False,
    admin_only: bool = False,
    labels: Mapping[str, str] | None = None,
) -> Callable[[F], F]: ...


def tool(
    function: F | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    rerun_safe: bool = False,
    admin_only: bool = False,
    labels: Mapping[str, str] | None = None,
) -> F | Callable[[F], F]:
    """Declares a tool: `@tool` or `@tool(timeout=30, rerun_safe=True, labels={"es": ...})`."""

    def declare(fn: F) -> F:
        description = inspect.cleandoc(fn.__doc__ or "").strip()
        if not description:
            raise TypeError(f"tool {fn.__name__}: a docstring is required (the model reads it)")
        spec = ToolSpec(
            name=name or fn.__name__,
            description=description,
            function=fn,
            arguments=_arguments_model(fn),
            timeout=timeout,
            rerun_safe=rerun_safe,
            admin_only=admin_only,
            labels=dict(labels or {}),
        )
        _declared[f"{fn.__module__}.{spec.name}"] = spec
        fn.__stillhere_tool__ = spec  # type: ignore[attr-defined]
        return fn

    if function is not None:
        return declare(function)
    return declare


class Registry:
    """The tools one engine offers. Later registrations replace earlier ones by name, so a
    user's module can override a built-in."""

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ToolSpec) -> None:
        if spec.name in self._specs:
            log.info("tool %s replaced by %s", spec.name, spec.function.__module__)
        self._specs[spec.name] = spec

    def load_module(self, path: str) -> None:
        module = importlib.import_module(path)
        found = [
            value.__stillhere_tool__
            for value in vars(module).values()
            if hasattr(value, "__stillhere_tool__")
        ]
        if not found:
            raise ValueError(f"module {path} declares no @tool function")
        for spec in found:
            self.add(spec)

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def openai_tools(self, *, include_admin: bool) -> list[dict[str, Any]]:
        return [
            spec.openai_schema
            for spec in self._specs.values()
            if include_admin or not spec.admin_only
        ]


def default_registry(modules: Iterable[str] = ()) -> Registry:
    """Built-in tools plus the user's TOOL_MODULES, in that order. A module that cannot be
    loaded (not found, failing on import, declaring no tool or a wrong one) is a wrong
    setting: one line naming TOOL_MODULES, the traceback chained for LOG_FILE."""
    registry = Registry()
    registry.load_module("bot.tools.builtin")
    for path in modules:
        try:
            registry.load_module(path)
        except Exception as exc:
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise SettingsError(f"setting TOOL_MODULES: cannot load {path}: {detail}") from exc
    return registry
