"""Lazy package exports: names are imported from their module on first use.

`jaxvalues --help` imports the CLI modules of every package and must not pay for JAX, Ray or
pandas; packages therefore export their public names through `lazy_exports`.

    __getattr__, __all__ = lazy_exports(__name__, {"collect": "jaxvalues.stats.collect", ...})
"""

from __future__ import annotations

from typing import Callable, Mapping


def lazy_exports(package: str, where: Mapping[str, str]) -> tuple[Callable, list[str]]:
    """where: public name -> module that defines it. -> (module __getattr__, __all__)."""
    table = dict(where)

    def __getattr__(name: str):
        if name in table:
            import importlib

            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(table)
