"""An ordered map on worker threads: the next items are processed while the caller uses this one."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_ahead(
    function: Callable[[Item], Result], items: Iterable[Item], threads: int
) -> Iterator[Result]:
    """Yields ``function(item)`` for each item, in order, computed on ``threads``
    threads with at most ``threads + 1`` items in flight.

    Worth it for functions that release the GIL (NumPy, TensorFlow). An error
    raised by ``items`` comes after the results of the items before it, as it would
    without threads.
    """
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    source = iter(items)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        while True:
            try:
                item = next(source, _END)
            except Exception:
                while pending:
                    yield pending.popleft().result()
                raise
            if item is _END:
                break
            pending.append(pool.submit(function, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_END = object()
