"""Who has the device: live scoring first, retraining between its steps, model swaps alone.

One ``ScoringActivity`` per serve process, shared by the scorer, the retraining job and the
model reloader:

- a worker scoring a study holds ``scoring()`` (several workers may at once);
- retraining calls ``yield_to_scoring()`` after every optimiser step, which waits while any
  study is being scored, so a study arriving during the nightly run is scored at full speed
  and training resumes afterwards (the cost is a training step's latency, well under a second
  for the default sizes; the wait is bounded so a stuck scorer cannot stall a run forever);
- a newly promoted model is swapped in under ``exclusive()``, which waits for running studies
  to finish and holds new ones back for the instant of the swap: a study is scored by one
  model set from start to end.

A ``tamperscan retrain --now`` in its own process cannot see this; it lowers its CPU priority
(``os.nice``) instead, so serve's scoring wins the cores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ScoringActivity:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._swapping = False

    @contextmanager
    def scoring(self) -> Iterator[None]:
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @property
    def active(self) -> int:
        return self._active

    def yield_to_scoring(self, max_wait_s: float = 600.0) -> None:
        """Block while studies are being scored (at most ``max_wait_s``)."""
        deadline = time.monotonic() + max_wait_s
        with self._cond:
            while self._active and time.monotonic() < deadline:
                self._cond.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._swapping = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._swapping = False
                self._cond.notify_all()
