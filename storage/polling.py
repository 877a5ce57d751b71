"""The one poll loop every background stage runs (scoring, assembly, delivery, model reload).

A stage supplies ``step``: it does one pass and returns whether it found work. Busy passes
follow each other at once; an idle pass, or one that raised, waits ``interval_s`` (or until
``stop`` is set). An exception is logged and the loop goes on: a database that is briefly
away must not end a stage for good.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


def poll(
    step: Callable[[], object],
    stop: threading.Event,
    interval_s: float,
    log: logging.Logger,
    what: str,
    *,
    wait_first: bool = False,
) -> None:
    """Run ``step`` until ``stop`` is set. ``wait_first``: the first pass comes after one
    interval (the caller has just done the work itself, e.g. loaded the models)."""
    if wait_first and stop.wait(interval_s):
        return
    while not stop.is_set():
        try:
            busy = bool(step())
        except Exception:
            log.exception("pass failed; retrying", extra={"stage": what})
            busy = False
        if not busy:
            stop.wait(interval_s)
