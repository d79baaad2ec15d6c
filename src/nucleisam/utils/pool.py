"""Mapping a function over a stream in a small thread pool, in order and with bounded look-ahead.

Tiled prediction uses it to post-process the tiles of one network batch while the network runs the
next: the post-processing (scipy.ndimage, scikit-image's watershed) releases the GIL for most of its
time, so threads overlap it with the network and with each other without pickling any maps, and
the results still reach the caller one by one in the order of the input.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may run on: its affinity (what a SLURM job, a container or ``taskset``
    grants), not every core of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, ahead: int
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` for every item of ``items``, in the order of ``items``.

    ``workers`` 0 runs ``fn`` in the calling thread, pulling each item just before it is processed
    (no thread is started). With ``workers`` ≥ 1, ``fn`` runs in that many threads while the calling
    thread pulls the following items (which may itself be work, e.g. a network batch); at most
    ``ahead`` items are taken and not yet yielded, which bounds memory. A result is yielded as soon as
    it and all earlier ones are done.

    An exception raised by ``fn`` is re-raised here unchanged when its item's turn comes. However the
    iteration ends (exhausted, an exception here or in ``fn``, ``KeyboardInterrupt``, or the generator
    closed), items not started yet are cancelled and only the calls already running are waited for.
    """
    if workers < 0:
        raise ValueError(f"workers={workers} must be 0 (this thread) or more")
    if workers == 0:
        for item in items:
            yield item, fn(item)
        return
    if ahead < 1:
        raise ValueError(f"ahead={ahead} must be at least 1")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nucleisam-pool")
    pending: deque[tuple[T, Future[R]]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            # Hand on what is finished at the head; block only when the look-ahead is used up.
            while pending and (pending[0][1].done() or len(pending) >= ahead):
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
