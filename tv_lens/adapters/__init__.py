"""Family adapters: one short declarative file per model family.

To add a family, write ``tv_lens/adapters/<family>.py`` declaring an :class:`Adapter` in a module-level
``ADAPTERS`` list: that file is the one place a family is registered (every module of this package but ``base``
is read), or call :func:`register_adapter` at run time.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import UnsupportedModelError
from .base import Adapter, contiguous_runs, resolve_path

def _family_modules() -> list[str]:
    """Every family module of this package (all but ``base``), found on disk: adding the file registers it."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")

_REGISTRY: dict[str, Adapter] = {}


def _load_registry() -> dict[str, Adapter]:
    if not _REGISTRY:
        for module_name in _family_modules():
            module = importlib.import_module(f"{__name__}.{module_name}")
            for adapter in getattr(module, "ADAPTERS", ()):
                register_adapter(adapter)
    return _REGISTRY


def register_adapter(adapter: Adapter) -> None:
    """Make ``adapter`` used for every HF class named in ``adapter.architectures``."""
    for arch in adapter.architectures:
        _REGISTRY[arch] = adapter


def supported_architectures() -> list[str]:
    """HF class names that have an adapter."""
    return sorted(_load_registry())


def adapter_for(model) -> Adapter:
    """The adapter for an HF model instance, by its class (or a parent class) name.

    Raises:
        UnsupportedModelError: naming the supported classes and how to add an adapter.
    """
    registry = _load_registry()
    for cls in type(model).__mro__:
        if cls.__name__ in registry:
            return registry[cls.__name__]
    families = sorted({a.family for a in registry.values()})
    raise UnsupportedModelError(
        f"No tv_lens adapter for {type(model).__name__}. Supported families: {', '.join(families)} "
        f"(classes: {', '.join(sorted(registry))}). To add one, declare an Adapter in "
        "tv_lens/adapters/<family>.py (where the decoder layers, final norm, lm_head and embeddings live) "
        "or call tv_lens.adapters.register_adapter(Adapter(...)); see docs/adding_a_family.md."
    )


__all__ = [
    "Adapter",
    "adapter_for",
    "contiguous_runs",
    "register_adapter",
    "resolve_path",
    "supported_architectures",
]
