"""Second line of defence against two writers: readers never yield an id twice.

Writers hold an OS lock (:mod:`lrs_core.locks`), so one output gets one writer. Outputs written
before the locks, or copied together by hand, may still hold an id twice; every reader of answers
and predictions passes its rows through :func:`first_per_id`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def first_per_id(
    rows: Iterable[T],
    *,
    id_of: Callable[[T], Hashable],
    failed: Callable[[T], bool],
    source: str,
) -> list[T]:
    """Keep one row per id: the first successful one, else the first failed one.

    Order follows each id's first appearance. Extra *successful* rows of an id (two writers, a
    part appended twice) are dropped with one warning giving their count; a failed row followed
    by a successful one is the ordinary retry of a resumed run and is dropped silently.

    Args:
        rows: records or prediction lines, in write order.
        id_of: ``row -> id``.
        failed: ``row -> True`` when the row carries an error.
        source: what was read (named in the warning).

    Returns:
        The kept rows.
    """
    chosen: dict[Hashable, T] = {}
    n_duplicates = 0
    for row in rows:
        key = id_of(row)
        previous = chosen.get(key)
        if previous is None:
            chosen[key] = row
        elif failed(previous):
            if not failed(row):
                chosen[key] = row
        elif not failed(row):
            n_duplicates += 1
    if n_duplicates:
        log.warning(
            "%s: %d duplicate answer(s) of an id already answered dropped (the first is kept); "
            "two writers wrote into it at once",
            source,
            n_duplicates,
        )
    return list(chosen.values())
