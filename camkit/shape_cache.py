"""A small least-recently-used dict, for what an :class:`camkit.Explainer` remembers per input shape."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["ShapeCache"]


class ShapeCache:
    """A small least-recently-used dict: the ``maxsize`` most recently read or written keys."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: "OrderedDict[Any, Any]" = OrderedDict()

    def get(self, key, default=None):
        """The value of ``key`` (now the most recently used), or ``default``."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def __setitem__(self, key, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def pop(self, key, default=None):
        return self._items.pop(key, default)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
