"""One name registry, used for the methods, the metrics and the dataset kinds.

Entries are registered under a name, either directly (:meth:`Registry.register`, also a class decorator)
or as a ``"module:attribute"`` reference (:meth:`Registry.register_lazy`) that is imported only when the
entry is first asked for, so that an entry's optional dependency (pycocotools for COCO) is needed only
when that entry is used. The built-in entries are registered by importing the modules named in
``builtins`` before the first lookup; code outside the package registers its own entries the same way
(a test method, a user's metric).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

from explainers.errors import ExplainersError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → entries of one kind.

    ``kind``: what an entry is, for messages ("method"). ``builtins``: modules whose import registers the
    built-in entries. ``unknown``: the message for an unknown name, formatted with ``name``, ``names``
    (the valid names, comma-separated) and any keyword given to :meth:`get`. ``error``: the exception
    class of that message. ``sort``: list names alphabetically (else in registration order).
    """

    def __init__(
        self,
        kind: str,
        *,
        builtins: Sequence[str] = (),
        unknown: str = "unknown {kind} {name!r}; valid: {names}",
        error: type[ExplainersError] = ExplainersError,
        sort: bool = False,
    ) -> None:
        self.kind = kind
        self._builtins = tuple(builtins)
        self._unknown = unknown
        self._error = error
        self._sort = sort
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._order: list[str] = []  # registration order (a lazy entry keeps its place once imported)
        self._loaded = not self._builtins

    # ------------------------------------------------------------------ registering
    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: Any = None) -> Any:
        """Register ``entry`` as ``name``; without ``entry``, a decorator that registers what it wraps.
        Registering another entry under a taken name is a programming error (ValueError)."""

        def add(obj: T) -> T:
            taken = self._entries.get(name)
            if (taken is not None and taken is not obj) or (taken is None and name in self._lazy):
                raise ValueError(f"{self.kind} name {name!r} registered twice")
            if name not in self._entries:
                self._order.append(name)
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"module:attribute"`` as ``name``, imported on first use."""
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"lazy {self.kind} entry {target!r} is not 'module:attribute'")
        if (name in self._entries and name not in self._lazy) or self._lazy.get(name, target) != target:
            raise ValueError(f"{self.kind} name {name!r} registered twice")
        if name not in self._lazy:
            self._order.append(name)
        self._lazy[name] = target

    # ------------------------------------------------------------------ looking up
    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a builtin module that looks names up while it registers must not recurse
        try:
            for module in self._builtins:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise

    def names(self) -> list[str]:
        """Every registered name (alphabetical when the registry sorts, else in registration order)."""
        self._load_builtins()
        return sorted(self._order) if self._sort else list(self._order)

    def get(self, name: str, **context: Any) -> T:
        """The entry registered as ``name``; an unknown name raises ``error`` listing the valid ones
        (``context``: extra fields for the message)."""
        self._load_builtins()
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            module, _, attribute = self._lazy[name].partition(":")
            entry: T = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry  # the lazy reference stays: registering the name again is an error
            return entry
        raise self._error(
            self._unknown.format(kind=self.kind, name=name, names=", ".join(self.names()), **context)
        )

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs in :meth:`names` order (imports every lazy entry)."""
        return [(name, self.get(name)) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries or name in self._lazy

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
