"""What the admin report tells the person on duty: a dashboard that does not read all-clear when
something waits or fails, a study page with findings in 3-D and provenance, an audit trail with
links, filters and a CSV export, and images the browser caches."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from admin.http import create_app
from admin.report import AdminReport
from storage.audit import audit
from storage.models import Delivery, Instance, Job, Study, utcnow
from tests.admin_helpers import (
    add_pending_delivery,
    migrated_service,
    record_scored_verdict,
    resend_changed,
    store_phantom_study,
)
from tests.test_admin_routes import login

CT_MODEL = [{"name": "inpaint", "modality": "CT", "version": "0123456789abcdef"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An 8-slice phantom CT with two lesions flagged (three slices, one slice) whose regions
    carry no finding numbers (an older scorer), and one slice re-sent with new bytes."""
    tmp = tmp_path_factory.mktemp("triage")
    service = migrated_service(tmp)
    data_dir = service.settings.storage.data_dir
    study_id = store_phantom_study(service.store, tmp / "phantoms", slices=8)
    resend_changed(service.store, sorted((tmp / "phantoms").rglob("*.dcm"))[5], "WS-07", "10.9.8.7")
    with service.db.reading() as session:
        sops = session.scalars(
            select(Instance.sop_instance_uid)
            .where(Instance.study_id == study_id)
            .order_by(Instance.instance_number)
        ).all()
    discs = [(sops[i], 50, 60, 6.0) for i in (1, 2, 3)] + [(sops[6], 100, 30, 5.0)]
    record_scored_verdict(service.db, data_dir, study_id, discs, number_findings=False)

    def client_for(**settings: Any) -> TestClient:
        app = create_app()
        admin = service.settings.admin.model_copy(update=settings)
        AdminReport(
            service.db, data_dir, admin, models=lambda: CT_MODEL, disk_watermark_mb=0
        ).install(app)
        client = TestClient(app)
        login(client, "victor")
        return client

    yield {"service": service, "study": study_id, "client_for": client_for, "sops": sops}
    service.db.dispose()


def test_dashboard_shows_a_pending_delivery_older_than_the_threshold_as_a_warning(
    world: dict[str, Any],
) -> None:
    service, study = world["service"], world["study"]
    client = world["client_for"](delivery_overdue_s=600.0)
    page = client.get("/").text
    assert 'id="status">All clear' in page
    add_pending_delivery(service.db, age_s=60)  # pending, but not for long: no warning yet
    page = client.get("/").text
    assert 'id="status">All clear' in page
    assert re.search(r'class="tile " href="/studies\?delivery=pending" id="tile-pending"', page)
    with service.db.session() as session:  # the PACS has not answered for 18 minutes
        session.execute(update(Delivery).values(created_at=utcnow() - timedelta(minutes=18)))
    page = client.get("/").text
    assert 'class="tile warn" href="/studies?delivery=overdue" id="tile-pending"' in page
    assert "pending for more than 10 min" in page and "All clear" not in page
    assert "oldest waiting 18 min" in page and "no association" in page
    dashboard = client.get("/api/dashboard").json()["deliveries"]
    assert dashboard["pending"] == 1 and dashboard["overdue"] == 1 and dashboard["failed"] == 0
    listed = client.get("/api/studies", params={"delivery": "overdue"}).json()
    assert [s["id"] for s in listed["studies"]] == [study]
    assert client.get("/api/studies", params={"delivery": "failed"}).json()["total"] == 0
    assert client.get("/api/studies", params={"verdict": "flagged"}).json()["total"] == 1
    lenient = world["client_for"](delivery_overdue_s=3600.0)  # the threshold is configurable
    assert 'id="status">All clear' in lenient.get("/").text
    with service.db.session() as session:
        session.execute(update(Delivery).values(state="failed"))
    page = client.get("/").text
    assert 'class="tile alert" href="/studies?delivery=failed" id="tile-failed"' in page
    with service.db.session() as session:
        session.execute(update(Delivery).values(state="delivered"))


def test_stuck_jobs_and_modalities_without_a_model(world: dict[str, Any]) -> None:
    service, study = world["service"], world["study"]
    with service.db.session() as session:
        session.add(
            Job(
                kind="score",
                study_id=study,
                study_version=99,
                state="queued",
                attempts=0,
                created_at=utcnow() - timedelta(hours=2),
            )
        )
    client = world["client_for"](job_stuck_s=900.0)
    page = client.get("/").text
    assert 'class="tile alert" href="/studies?job=stuck" id="tile-stuck"><b>1</b>' in page
    assert "1 scoring jobs stuck" in page
    assert client.get("/api/studies", params={"job": "stuck"}).json()["total"] == 1
    # No model loaded while CT arrives: the dashboard says so and links the studies it affects.
    app = create_app()
    AdminReport(service.db, service.settings.storage.data_dir, service.settings.admin).install(app)
    bare = TestClient(app)
    login(bare, "victor")
    page = bare.get("/").text
    assert 'href="/studies?modality=CT&amp;verdict=not_scored" id="tile-models"' in page
    assert "no trained model for CT, which is arriving" in page
    with service.db.session() as session:
        session.execute(update(Job).where(Job.study_version == 99).values(state="superseded"))


def test_study_page_groups_findings_in_3d_and_shows_provenance(world: dict[str, Any]) -> None:
    client, study = world["client_for"](), world["study"]
    response = client.get(f"/studies/{study}")
    page = response.text
    assert len(response.content) < 200_000
    cards = re.findall(r'<article class="finding" id="finding-(\d)"', page)
    assert cards == ["1", "2"]  # slices 2-4 are one lesion; slice 7 another
    assert "slices 2–4 of 8" in page and "slice 7 of 8" in page
    assert "slice 3 of 8 (instance 3)" in page  # the centre slice, with its instance number
    assert "slice 4 (#4)" in page
    assert page.count('class="crop heat"') == 2 and page.count('loading="lazy"') >= 4
    assert "inpaint" in page and "btd" in page and "heat-scale" in page
    assert "sigma_ratio 2.5" in page  # other values a check recorded are shown too
    assert re.search(r"<summary>16 regions checked and not flagged", page)
    assert "Instances replaced with different bytes" in page and "WS-07" in page
    assert "10.9.8.7" in page and "1 instance(s) re-sent with different bytes" in page
    data = client.get(f"/api/studies/{study}").json()
    assert [(f["first_slice"], f["last_slice"]) for f in data["findings"]] == [(2, 4), (7, 7)]
    assert data["findings"][0]["checks"]["inpaint"]["p"] == pytest.approx(0.0002)
    assert data["provenance"]["replaced"][0]["actor"] == "WS-07"
    assert data["regions_flagged"] == 4 and data["regions_checked"] == 20


def test_images_are_cached_and_revalidated(world: dict[str, Any]) -> None:
    client, study = world["client_for"](), world["study"]
    page = client.get(f"/studies/{study}").text
    crop = re.search(r'src="(/regions/\d+/crop.png)"', page).group(1)
    first = client.get(crop)
    assert first.status_code == 200 and "immutable" in first.headers["cache-control"]
    again = client.get(crop, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert len(first.content) < 60_000  # a crop, not a whole slice
    with world["service"].db.reading() as session:
        instance = session.scalars(select(Instance).where(Instance.study_id == study)).first()
    url = f"/studies/{study}/instances/{instance.id}.png"
    lung = client.get(url, params={"window": "lung"})
    bone = client.get(url, params={"window": "bone"})
    assert lung.status_code == bone.status_code == 200
    assert lung.headers["etag"] != bone.headers["etag"] and lung.content != bone.content
    assert instance.sha256[:20] in lung.headers["etag"]  # new bytes, new ETag
    assert client.get(url, headers={"If-None-Match": lung.headers["etag"]}).status_code == 200
    hit = client.get(
        url, params={"window": "lung"}, headers={"If-None-Match": lung.headers["etag"]}
    )
    assert hit.status_code == 304


def test_audit_page_links_filters_and_exports_csv(world: dict[str, Any]) -> None:
    service, study = world["service"], world["study"]
    with service.db.session() as session:
        audit(session, actor="=HYPERLINK(1)", action="study.mark", target=str(study))
        audit(session, actor="alice", action="model.promote", target="model:7")
    client = world["client_for"]()
    page = client.get("/audit").text
    assert f'<a href="/studies/{study}">study {study}</a>' in page
    assert page.count(f'<a href="/studies/{study}">') >= 3  # marks, the verdict, the replacement
    assert '<dl class="detail">' in page and "{&#34;" not in page  # rendered, not raw JSON
    assert '<a href="/models#version-7">model version 7</a>' in page
    assert '<a href="/audit?actor=victor">victor</a>' in page  # user.add: the user's events
    only = client.get("/audit", params={"action": "instance.replaced"}).text
    assert "instance.replaced" in only and "verdict.recorded</a>" not in only
    prefixed = client.get("/api/audit", params={"action": "study."}).json()
    assert {e["action"] for e in prefixed["events"]} == {"study.mark"}
    by_actor = client.get("/api/audit", params={"actor": "WS-07"}).json()
    assert by_actor["total"] == 1
    assert client.get("/api/audit", params={"from": "2999-01-01"}).json()["total"] == 0
    export = client.get("/audit.csv", params={"action": "study."})
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(export.text)))
    assert rows[0] == ["id", "at_utc", "actor", "action", "target", "detail"]
    assert rows[1][2] == "'=HYPERLINK(1)"  # not a formula in a spreadsheet
    assert len(rows) == 2
    assert len(list(csv.reader(io.StringIO(client.get("/audit.csv").text)))) > 5
    with service.db.reading() as session:
        assert session.get(Study, study) is not None
