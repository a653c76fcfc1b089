"""Name -> class registries, so a notebook swaps a part by name (notebooks 03-07).

Connectors, compressors and the like each keep one :class:`Registry`; a later notebook adds
its class with ``@REGISTRY.register("name")`` and the model builds it by name.
"""
from __future__ import annotations

from typing import Callable


class Registry:
    """Classes of one kind (e.g. "connector"), buildable by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: make the class buildable as ``name``; sets ``cls.name``."""

        def wrap(cls: type) -> type:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({self._classes[name].__name__})")
            self._classes[name] = cls
            cls.name = name
            return cls

        return wrap

    def names(self) -> list[str]:
        return sorted(self._classes)

    def module_of(self, name: str) -> str:
        """The module that registered ``name``: saved with a model so that it reloads in a fresh process."""
        self.build_check(name)
        return self._classes[name].__module__

    def build_check(self, name: str) -> None:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")

    def build(self, name: str, *args, **kwargs):
        """An instance of the class registered as ``name``; an unknown name lists the known ones."""
        self.build_check(name)
        return self._classes[name](*args, **kwargs)
