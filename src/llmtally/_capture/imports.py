"""Patch HTTP client modules that are imported after llmtally started, right after their import.

``import llmtally`` must not import httpx (or any client) just to patch it, and an SDK imported
later must still be metered; so a meta-path finder wraps the loader of each watched module and
calls the adapter's ``patch`` once the module has executed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["PatchOnImport"]

log = logging.getLogger("llmtally")


class PatchOnImport:  # a meta-path finder; importlib.abc would cost 25 ms of import time
    """``watch(name, patch)``: call ``patch(module)`` right after ``name`` is first imported."""

    def __init__(self) -> None:
        self._watched: dict[str, Callable[[Any], None]] = {}

    def watch(self, name: str, patch: Callable[[Any], None]) -> None:
        self._watched[name] = patch

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        patch = self._watched.get(fullname)
        if patch is None:
            return None
        # Let the normal finders find it, then wrap the loader's exec_module.
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader = spec.loader

                def exec_and_patch(module: Any, _exec: Any = loader.exec_module) -> None:
                    _exec(module)
                    if self not in sys.meta_path:
                        return  # stopped while the module was loading
                    try:
                        patch(module)
                    except Exception:
                        log.exception("llmtally: could not instrument %s", fullname)

                spec.loader = _LoaderProxy(loader, exec_and_patch)  # type: ignore[assignment]
                return spec
        return None


class _LoaderProxy:
    def __init__(self, loader: Any, exec_module: Any) -> None:
        self._loader = loader
        self._exec = exec_module

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._exec(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
