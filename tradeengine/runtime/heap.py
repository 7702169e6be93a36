"""Garbage-collector policy for replays: keep the boot-time heap out of every collection.

A tenant imports numba, SQLAlchemy, ccxt... (hundreds of thousands of long-lived objects). The
per-tick objects a replay makes (frozen views, events) get promoted often enough to trigger full
collections, and each one walks that whole heap (~0.1 s). ``gc.freeze()`` moves everything alive
at the start into the permanent generation, so collections only look at what the replay itself
allocates. Behaviour is unchanged: objects still die by reference counting, and cycles created
during the replay are still collected; only cycles among the frozen boot-time objects wait until
``gc.unfreeze()`` at the end.

The first generation's threshold is raised for the same span: a replay allocates a few
containers per candle (rows, views, frozen inputs) that reference counting frees at once, yet
each 700 of them start a collection (and the sandbox's GC-time accounting with it), which cost
more than a tenth of a strategy-free replay. Collections still run, every 50,000 allocations.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_REPLAY_GEN0 = 50_000


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the current heap for the duration of a replay (``with frozen_heap(): await feed.run()``)."""
    gc.collect()
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], _REPLAY_GEN0), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
