"""Ordered parallel map over worker processes, for batch jobs (simulation, training sets)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

__all__ = ["ordered_map"]

T = TypeVar("T")
R = TypeVar("R")

_THREAD_VARS = (
    "POLARS_MAX_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ARROW_NUM_THREADS",
)


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Worker processes each use one core: no thread pools fighting over the cores."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, results in order.

    At most ``workers + 1`` items are in flight, so memory stays bounded; with one
    worker (or one item) everything runs in this process. ``fn`` must be a
    module-level function (processes are spawned, not forked: threads of polars and
    arrow do not survive a fork).
    """
    todo = list(items)
    if workers <= 1 or len(todo) <= 1:
        yield from map(fn, todo)
        return
    ctx = multiprocessing.get_context("spawn")
    with _single_threaded_children(), ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending: deque[Future[R]] = deque()
        for item in todo:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
