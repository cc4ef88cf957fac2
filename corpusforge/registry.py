"""Name → class registries for stages, steps and crawl backends, with entry-point plugins.

Built-ins are ``"module:attr"`` strings (``builtins.py``, data only) imported on first use, so ``import corpusforge``
stays light. Third-party packages add entries through the entry-point groups ``corpusforge.steps``,
``corpusforge.stages`` and ``corpusforge.backends``.
Modules named in the ``CORPUSFORGE_PLUGINS`` environment variable (comma-separated) are imported too.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from typing import Any

from corpusforge import builtins
from corpusforge.errors import ConfigError


class Registry:
    def __init__(self, kind: str, entry_point_group: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self.group = entry_point_group
        self._targets: dict[str, str | Any] = dict(builtins)
        self._plugins_loaded = False

    def add(self, name: str, target: str | Any) -> None:
        """Register ``target`` (an object or a lazy ``"module:attr"`` string) under ``name``."""
        self._targets[name] = target

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            self.add(name, obj)
            return obj

        return deco

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            self._targets.setdefault(ep.name, ep.value)
        # Local plugin modules without packaging: CORPUSFORGE_PLUGINS=mypkg.steps,other.module
        for module in filter(None, os.environ.get("CORPUSFORGE_PLUGINS", "").split(",")):
            try:
                importlib.import_module(module.strip())
            except ImportError as exc:
                raise ConfigError(f"cannot import plugin module {module!r}: {exc}", path="CORPUSFORGE_PLUGINS") from exc

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._targets)

    def get(self, name: str, *, path: str | None = None) -> Any:
        self._load_plugins()
        if name not in self._targets:
            close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Choices: {', '.join(self.names())}", path=path)
        target = self._targets[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._targets[name] = target
        return target


STAGES = Registry("stage kind", "corpusforge.stages", builtins.STAGES)
STEPS = Registry("step", "corpusforge.steps", builtins.STEPS)
BACKENDS = Registry("crawl backend", "corpusforge.backends", builtins.BACKENDS)
