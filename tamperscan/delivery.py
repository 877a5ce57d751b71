"""The report dispatcher as every process runs it: safe beside dispatchers on other hosts.

``scp.dispatch.Dispatcher.run_once`` reads due deliveries without claiming them, which is
right for one process and sends a report twice when several workers share the queue. This
subclass claims each due delivery first (``storage.deliveries.claim_due_deliveries``).
Folding the claim into ``scp.dispatch`` itself would retire this module.
"""

from __future__ import annotations

import logging
import threading

from scp.dispatch import Dispatcher
from storage.deliveries import claim_due_deliveries, enqueue_missing
from storage.polling import poll

log = logging.getLogger(__name__)


class SharedDispatcher(Dispatcher):
    lease_s: float = 300.0

    def run_once(self) -> bool:
        """Queue what is missing, claim what is due and attempt it; True when attempted."""
        names = list(self.senders)
        if not names:
            return False
        with self.db.session() as session:
            created = enqueue_missing(
                session, names, self.clock(), include_not_scored=self.reports.send_not_scored
            )
            if created:
                log.info("reports queued", extra={"deliveries": created})
            due = claim_due_deliveries(session, names, self.clock(), self.lease_s)
        for delivery in due:
            self._attempt(delivery)
        return bool(due)

    def run(self, stop: threading.Event) -> None:
        log.info("report dispatcher started", extra={"destinations": ",".join(self.senders)})
        poll(self.run_once, stop, self.delivery.poll_interval_s, log, "report dispatch")
