"""``tamperscan serve`` on PostgreSQL: concurrent associations into one new study, then
assembly, the scoring job (no detector configured: an honest not_scored) and the verdict, all
through the real service."""

from __future__ import annotations

import threading
import time
from typing import Any

from pydicom.uid import CTImageStorage, generate_uid
from sqlalchemy import func, select

from storage.models import Instance, Job, Study, Verdict
from tests.dicom_helpers import ct_dataset, make_scu


def test_serve_on_postgresql_receives_concurrently_and_scores_once(
    service_factory: Any, postgres_server: Any
) -> None:
    service = service_factory(
        storage={"database_url": postgres_server.new_database()},
        assembly={"stable_age_s": 1.0, "released_age_s": 0.5, "poll_interval_s": 0.1},
        worker={"poll_interval_s": 0.1, "concurrency": 2},
        detector={"checks": []},  # nothing to score with: the verdict comes at once
    )
    assert service.db.engine.dialect.name == "postgresql"
    study, series = generate_uid(), generate_uid()
    statuses: list[int] = []
    lock = threading.Lock()

    def send(first: int) -> None:
        ae = make_scu()
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="TAMPERSCAN")
        assert assoc.is_established
        for n in range(first, first + 5):
            status = assoc.send_c_store(ct_dataset(study, series, index=n)).Status
            with lock:
                statuses.append(status)
        assoc.release()

    senders = [threading.Thread(target=send, args=(1 + 5 * k,)) for k in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)
    assert statuses == [0] * 20
    deadline = time.monotonic() + 30
    verdicts: list[Verdict] = []
    while time.monotonic() < deadline and not verdicts:
        with service.db.reading() as session:
            verdicts = list(session.scalars(select(Verdict)))
        time.sleep(0.2)
    with service.db.reading() as session:
        assert session.scalar(select(func.count(Study.id))) == 1
        assert session.scalar(select(func.count(Instance.id))) == 20
        assert session.scalar(select(func.count(Job.id))) == 1
    [verdict] = verdicts
    assert verdict.is_current and verdict.study_version == 1
    assert verdict.outcome == "not_scored"  # honest: no detector configured
