"""The admin report's routes: who may see and do what, CSRF, throttling, and what is shown."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from admin.http import create_app
from admin.report import AdminReport
from storage.models import (
    AuditEvent,
    Job,
    Mark,
    ModelVersion,
    Region,
    RequestedRegion,
    Study,
    utcnow,
)
from storage.registry import add_version
from tests.admin_helpers import (
    PASSWORDS,
    migrated_service,
    record_flagged_verdict,
    store_phantom_study,
)

PUBLIC = {"/login", "/healthz", "/readyz"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A migrated (not started) service with two users and one flagged phantom study."""
    tmp = tmp_path_factory.mktemp("admin")
    service = migrated_service(tmp)
    study_id = store_phantom_study(service.store, tmp / "phantoms")
    record_flagged_verdict(service.db, service.settings.storage.data_dir, study_id)
    with service.db.reading() as session:
        region = session.scalars(select(Region).where(Region.flagged.is_(True))).one()
    yield {"service": service, "study_id": study_id, "region_id": region.id, "tmp": tmp}
    service.db.dispose()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def login(client: TestClient, user: str, password: str | None = None) -> str:
    """Log in through the form; returns the session's CSRF token."""
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={
            "username": user,
            "password": password or PASSWORDS[user],
            "csrf_token": token,
            "next": "/studies",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/studies").text)


def _client(world: dict[str, Any]) -> TestClient:
    return TestClient(world["service"].app)


def _concrete(path: str, world: dict[str, Any]) -> str:
    return (
        path.replace("{study_id}", str(world["study_id"]))
        .replace("{region_id}", str(world["region_id"]))
        .replace("{instance_id}", "1")
        .replace("{version_id}", "1")
    )


def test_every_non_public_route_refuses_an_anonymous_request(world: dict[str, Any]) -> None:
    client = _client(world)
    routes = [
        r
        for router in world["service"].report.routers
        for r in router.routes
        if isinstance(r, APIRoute)
    ]
    checked = 0
    for route in routes:
        if route.path in PUBLIC or route.path.startswith("/dicom-web"):
            continue
        for method in route.methods - {"HEAD"}:
            response = client.request(method, _concrete(route.path, world), follow_redirects=False)
            if route.path.startswith(("/api/", "/metrics")):
                assert response.status_code == 401, (method, route.path)
            else:
                assert response.status_code == 303, (method, route.path)
                assert response.headers["location"].startswith("/login?next=")
            assert "Phantom" not in response.text
            checked += 1
    assert checked >= 20
    for path in PUBLIC:
        assert client.get(path).status_code in (200, 503)
    assert client.get("/static/style.css").status_code == 200


def test_session_cookie_flags(world: dict[str, Any]) -> None:
    client = _client(world)
    cookie = client.get("/login").headers["set-cookie"].lower()  # attributes: any case
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    https = TestClient(world["service"].app, base_url="https://testserver")
    assert "; secure" in https.get("/login").headers["set-cookie"].lower()


def test_viewer_sees_but_cannot_act(world: dict[str, Any]) -> None:
    client = _client(world)
    token = login(client, "victor")
    study = world["study_id"]
    page = client.get(f"/studies/{study}")
    assert page.status_code == 200 and "tampered" in page.text
    assert "Re-score study" not in page.text  # no buttons a viewer cannot use
    for path, data in (
        (f"/studies/{study}/rescore", {}),
        (f"/studies/{study}/resend", {}),
        (f"/studies/{study}/mark", {"label": "tampered"}),
        (f"/studies/{study}/regions", {"instance_id": 1, "x": 5, "y": 5}),
    ):
        response = client.post(path, data={**data, "csrf_token": token})
        assert response.status_code == 403, path
    api = client.post(f"/api/studies/{study}/rescore", headers={"X-CSRF-Token": token})
    assert api.status_code == 403
    assert client.get("/api/studies").json()["total"] == 1


def test_csrf_is_enforced_on_every_action(world: dict[str, Any]) -> None:
    client = _client(world)
    token = login(client, "alice")
    study = world["study_id"]
    for path in (f"/studies/{study}/rescore", f"/studies/{study}/mark", "/logout"):
        assert client.post(path, data={"label": "genuine"}).status_code == 403
        assert (
            client.post(path, data={"label": "genuine", "csrf_token": "0" * 64}).status_code == 403
        )
    assert client.post(f"/api/studies/{study}/rescore").status_code == 403
    # A login form without the token is refused too (login CSRF).
    fresh = _client(world)
    fresh.get("/login")
    response = fresh.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]})
    assert response.status_code == 403
    # The token of another session is worthless.
    other = _client(world)
    other_token = csrf_of(other.get("/login").text)
    assert other_token != token
    assert (
        client.post(f"/studies/{study}/rescore", data={"csrf_token": other_token}).status_code
        == 403
    )


def test_wrong_passwords_are_throttled_and_audited(world: dict[str, Any]) -> None:
    service = world["service"]
    settings = service.settings.admin.model_copy(update={"login_max_failures": 3})
    app = create_app()
    AdminReport(service.db, service.settings.storage.data_dir, settings).install(app)
    client = TestClient(app)
    token = csrf_of(client.get("/login").text)

    def attempt(password: str) -> int:
        data = {"username": "alice", "password": password, "csrf_token": token}
        return client.post("/login", data=data, follow_redirects=False).status_code

    assert [attempt("wrong-password") for _ in range(3)] == [401, 401, 401]
    assert attempt(PASSWORDS["alice"]) == 429  # even the right password, while locked out
    with service.db.reading() as session:
        reasons = [
            e.detail["reason"]
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == "login.failed")
            ).all()
        ]
    assert reasons.count("throttled") >= 1 and reasons.count("wrong user name or password") >= 3


def test_admin_acts_and_every_act_is_audited(world: dict[str, Any]) -> None:
    client = _client(world)
    token = login(client, "alice")
    service, study, region = world["service"], world["study_id"], world["region_id"]
    detail = client.get(f"/studies/{study}")
    assert detail.status_code == 200
    assert f"/regions/{region}/crop.png" in detail.text and "0.0004" in detail.text
    for path in (f"/regions/{region}.png", f"/regions/{region}/crop.png?heat=false"):
        image = client.get(path)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), path
    response = client.post(
        f"/studies/{study}/mark",
        data={"label": "tampered", "region_id": region, "csrf_token": token},
    )
    assert response.status_code == 200 and "region" in response.text
    assert "confirmed tampered" in response.text
    instance_id = re.search(r'name="instance_id" value="(\d+)"', response.text).group(1)
    slice_png = client.get(f"/studies/{study}/instances/{instance_id}.png?size=96")
    assert slice_png.status_code == 200 and slice_png.content.startswith(b"\x89PNG")
    assert client.get(f"/studies/{study}/instances/999999.png").status_code == 404
    added = client.post(
        f"/studies/{study}/regions",
        data={"instance_id": instance_id, "x": 30, "y": 40, "radius_px": 9, "csrf_token": token},
    )
    assert added.status_code == 200 and "will be checked" in added.text
    with service.db.reading() as session:
        version_before = session.get(Study, study).version
    rescored = client.post(f"/api/studies/{study}/rescore", headers={"X-CSRF-Token": token})
    assert rescored.status_code == 200, rescored.text
    resend = client.post(f"/studies/{study}/resend", data={"csrf_token": token})
    assert resend.status_code == 409 and "no delivery" in resend.text  # no destination here
    mark = client.post(
        f"/api/studies/{study}/marks", json={"label": "genuine"}, headers={"X-CSRF-Token": token}
    )
    assert mark.status_code == 200
    bad = client.post(
        f"/api/studies/{study}/marks", json={"label": "maybe"}, headers={"X-CSRF-Token": token}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "label"]
    with service.db.reading() as session:
        study_row = session.get(Study, study)
        assert study_row.version == version_before + 1 and study_row.state == "queued"
        jobs = session.scalars(select(Job).where(Job.study_id == study, Job.state == "queued"))
        assert [j.study_version for j in jobs] == [study_row.version]
        assert session.scalars(select(RequestedRegion)).one().x == 30
        labels = [(m.region_id, m.label) for m in session.scalars(select(Mark)).all()]
        assert (region, "tampered") in labels and (None, "genuine") in labels
        actions = {e.action for e in session.scalars(select(AuditEvent)).all()}
    assert {"login", "region.mark", "study.mark", "region.request", "study.rescore"} <= actions


def test_pages_api_readiness_and_metrics(world: dict[str, Any]) -> None:
    client = _client(world)
    login(client, "victor")
    for path in (
        "/",
        "/studies?verdict=tampered&modality=CT&calling_ae=CT01",
        "/models",
        "/audit",
        "/api/docs",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
    listed = client.get("/api/studies", params={"verdict": "tampered", "patient": "PH"}).json()
    assert listed["total"] in (0, 1)
    assert client.get("/api/studies", params={"verdict": "clean"}).json()["total"] == 0
    assert client.get("/api/studies", params={"from": "yesterday"}).status_code == 422
    study = client.get(f"/api/studies/{world['study_id']}").json()
    assert study["regions"][0]["flagged"] and study["regions"][0]["scores"]["inpaint"]["p"]
    registry = client.get("/api/models").json()["registry"]
    assert {"versions", "slots", "runs", "running_run"} <= set(registry)
    assert "/api/studies" in client.get("/api/openapi.json").json()["paths"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "tamperscan_instances_total 4.0" in metrics.text
    assert 'tamperscan_verdicts{outcome="tampered"}' in metrics.text
    assert "tamperscan_scoring_seconds_bucket" in metrics.text
    ready = client.get("/readyz").json()
    assert ready["checks"]["database"]["ok"] and not ready["checks"]["dicom_listener"]["ok"]


def test_metrics_token_for_prometheus(world: dict[str, Any], tmp_path: Path) -> None:
    service = world["service"]
    settings = service.settings.admin.model_copy(update={"metrics_token": "s3cret-token"})
    app = create_app()
    AdminReport(service.db, service.settings.storage.data_dir, settings).install(app)
    client = TestClient(app)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    )


def test_open_redirect_after_login_is_refused(world: dict[str, Any]) -> None:
    client = _client(world)
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={
            "username": "victor",
            "password": PASSWORDS["victor"],
            "csrf_token": token,
            "next": "//evil.example/",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_started_service_is_ready(service_factory: Any) -> None:
    service = service_factory()
    client = TestClient(service.app)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["models"]["detail"] == "no model configured"


# -- the Models page: registry, promote, roll back, retrain now ------------------------------

MODEL_ACTIONS = (
    ("/models/1/promote", "/api/models/1/promote", {"reason": "x"}),
    ("/models/rollback", "/api/models/rollback", {"detector": "inpaint", "modality": "MR"}),
    ("/models/retrain", "/api/models/retrain", {}),
)


def _add_version(world: dict[str, Any], name: str, metrics: dict[str, Any] | None = None) -> int:
    """A registry candidate with a (dummy) checkpoint file where serving would look for it."""
    service = world["service"]
    models_dir = service.settings.storage.data_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / name).write_bytes(b"not a real checkpoint")
    with service.db.session() as session:
        return add_version(
            session,
            detector="inpaint",
            modality="MR",
            checkpoint_path=name,
            sha256="ab" * 32,
            now=utcnow(),
            metrics=metrics,
            manifest={"train": ["a", "b", "c"], "gate": ["d"], "patients": 3},
        ).id


def _states(world: dict[str, Any]) -> dict[int, str]:
    with world["service"].db.reading() as session:
        return dict(session.execute(select(ModelVersion.id, ModelVersion.state)).all())


def test_viewer_cannot_promote_roll_back_or_retrain(world: dict[str, Any]) -> None:
    client = _client(world)
    token = login(client, "victor")
    page = client.get("/models")
    assert page.status_code == 200 and "No model registry yet" not in page.text
    assert "Retrain now" not in page.text and ">Promote<" not in page.text
    for form_path, api_path, data in MODEL_ACTIONS:
        assert client.post(form_path, data={**data, "csrf_token": token}).status_code == 403
        response = client.post(api_path, json=data, headers={"X-CSRF-Token": token})
        assert response.status_code == 403, api_path


def test_csrf_is_enforced_on_model_actions(world: dict[str, Any]) -> None:
    client = _client(world)
    login(client, "alice")
    for form_path, api_path, data in MODEL_ACTIONS:
        assert client.post(form_path, data=data).status_code == 403, form_path
        bad = {**data, "csrf_token": "0" * 64}
        assert client.post(form_path, data=bad).status_code == 403, form_path
        assert client.post(api_path, json=data).status_code == 403, api_path


def test_admin_promotes_and_rolls_back_a_registry_version(world: dict[str, Any]) -> None:
    client = _client(world)
    token = login(client, "alice")
    gate = {"auc": 0.931, "false_alarm_rate": 0.012, "tampered": 8, "genuine": 8}
    first = _add_version(world, "mr-first.ckpt")
    second = _add_version(world, "mr-second.ckpt", {"gate": gate, "production": None})
    page = client.get("/models")
    assert f'action="/models/{first}/promote"' in page.text and "AUC 0.931" in page.text
    promoted = client.post(
        f"/models/{first}/promote", data={"reason": "first MR model", "csrf_token": token}
    )
    assert promoted.status_code == 200 and "now the production inpaint model" in promoted.text
    row = re.search(rf'<tr class="state-(\w+)" id="version-{first}"', promoted.text)
    assert row and row.group(1) == "production"
    api = client.post(
        f"/api/models/{second}/promote", json={"reason": "better"}, headers={"X-CSRF-Token": token}
    )
    assert api.status_code == 200, api.text
    assert _states(world)[first] == "retired" and _states(world)[second] == "production"
    listed = {v["id"]: v for v in client.get("/api/models").json()["registry"]["versions"]}
    assert listed[second]["gate"]["auc"] == 0.931 and listed[second]["train_instances"] == 3
    slot = next(
        s for s in client.get("/api/models").json()["registry"]["slots"] if s["modality"] == "MR"
    )
    assert slot == {
        "detector": "inpaint",
        "modality": "MR",
        "production": second,
        "rollback_to": first,
    }
    rolled = client.post(
        "/models/rollback", data={"detector": "inpaint", "modality": "MR", "csrf_token": token}
    )
    assert rolled.status_code == 200 and f"version {first} is the production" in rolled.text
    assert _states(world)[first] == "production" and _states(world)[second] == "retired"
    # Registry refusals are a 409 with the reason, never a 500.
    again = client.post(f"/api/models/{first}/promote", headers={"X-CSRF-Token": token})
    assert again.status_code == 409 and "only a candidate or a retired" in again.json()["detail"]
    none = client.post(
        "/api/models/rollback",
        json={"detector": "btd", "modality": "MR"},
        headers={"X-CSRF-Token": token},
    )
    assert none.status_code == 409 and "no production btd" in none.json()["detail"]
    missing = _add_version(world, "mr-gone.ckpt")
    (world["service"].settings.storage.data_dir / "models" / "mr-gone.ckpt").unlink()
    gone = client.post(f"/models/{missing}/promote", data={"csrf_token": token})
    assert gone.status_code == 409 and "missing" in gone.text
    assert (
        client.post("/api/models/999999/promote", headers={"X-CSRF-Token": token}).status_code
        == 409
    )
    with world["service"].db.reading() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action.like("model.%"))
        ).all()
    assert actions.count("model.promote") >= 2 and "model.rollback" in actions


def test_retrain_now(world: dict[str, Any]) -> None:
    service = world["service"]
    data_dir = service.settings.storage.data_dir

    def app_with(retrain_now: Any) -> TestClient:
        app = create_app()
        AdminReport(service.db, data_dir, service.settings.admin, retrain_now=retrain_now).install(
            app
        )
        return TestClient(app)

    disabled = app_with(None)
    token = login(disabled, "alice")
    page = disabled.get("/models")
    assert "Retrain now" not in page.text and "retraining is disabled" in page.text.lower()
    refused = disabled.post("/models/retrain", data={"csrf_token": token})
    assert refused.status_code == 409 and "disabled" in refused.text
    api = disabled.post("/api/models/retrain", headers={"X-CSRF-Token": token})
    assert api.status_code == 409 and "[retrain] enabled = false" in api.json()["detail"]

    calls: list[str] = []
    enabled = app_with(calls.append)
    token = login(enabled, "alice")
    assert "Retrain now" in enabled.get("/models").text
    started = enabled.post("/api/models/retrain", headers={"X-CSRF-Token": token})
    assert started.status_code == 200 and calls == ["alice"]
    # The service itself: retraining enabled in config but never started here -> 409, not 500.
    client = _client(world)
    token = login(client, "alice")
    answer = client.post("/api/models/retrain", headers={"X-CSRF-Token": token})
    assert answer.status_code == 409
    with service.db.reading() as session:
        requests = session.scalars(
            select(AuditEvent.actor).where(AuditEvent.action == "retrain.request")
        ).all()
    assert requests == ["alice"]  # the refused attempts left no audit event behind


def test_a_login_ends_after_session_hours_whatever_the_cookie_says(world: dict[str, Any]) -> None:
    """The cookie is Starlette's signed session; the login time inside it is checked too, so a
    cookie re-signed later (or kept past its Max-Age) cannot stretch a login."""
    import json
    import time
    from base64 import b64encode

    import itsdangerous

    from admin.auth import COOKIE, password_fingerprint
    from storage.models import User

    service = world["service"]
    secret = (service.settings.storage.data_dir / "admin" / "session.key").read_bytes().strip()
    with service.db.reading() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        fingerprint = password_fingerprint(alice.password_hash)
    signer = itsdangerous.TimestampSigner(secret.decode("latin-1"))

    def cookie(login_at: float) -> str:
        data = {"n": "nonce", "u": alice.id, "f": fingerprint, "t": int(login_at)}
        return signer.sign(b64encode(json.dumps(data).encode())).decode()

    hours = service.settings.admin.session_hours
    for login_at, status in ((time.time() - 60, 200), (time.time() - hours * 3600 - 60, 303)):
        client = _client(world)
        client.cookies.set(COOKIE, cookie(login_at))
        assert client.get("/studies", follow_redirects=False).status_code == status, login_at
