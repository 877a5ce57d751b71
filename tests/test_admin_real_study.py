"""The triage page for a study the real pipeline scored: C-STORE, the worker, the forensic checks.

No fixture verdict here: a tamper-lab copy-move study (pasted tissue, exact copies) is sent over
DICOM to an in-process service with no trained model; the worker scores it with the default
forensic checks and records the verdict, regions, heatmaps and 3-D findings; Chromium then opens
the study page and finds the findings with their crops, heatmap, colour scale and evidence of
each check. With TAMPERSCAN_UPDATE_DOCS=1 this test writes the screenshots in docs/ (study
page, dashboard, audit log), so what the docs show is real detector output.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from storage.models import Verdict
from tamperscan.cli import main
from tests.admin_helpers import PASSWORDS, add_test_users
from tests.dicom_helpers import REPO
from tests.test_admin_browser import ARGS, CHROMIUM, MAX_PAGE_BYTES, _no_sideways_scroll
from tests.test_study_scoring import _send_folder

pytestmark = [pytest.mark.slow]


def test_real_scored_study_in_chromium(service_factory: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    genuine, tampered = tmp_path / "genuine", tmp_path / "tampered"
    common = ["--size", "192", "--seed", "83", "--quiet"]
    assert main(["phantoms", "--modality", "CT", "--studies", "1", "--slices", "24",
                 "--out", str(genuine), *common]) == 0  # fmt: skip
    assert main(["tamper", "--in", str(genuine), "--out", str(tampered), "--attack",
                 "copy-move", "--count", "2", "--seed", "84"]) == 0  # fmt: skip
    study = next(p for p in tampered.iterdir() if p.is_dir())
    service = service_factory(
        detector={"device": "cpu", "window_stride_px": 0},
        assembly={"stable_age_s": 1.0, "released_age_s": 0.3, "poll_interval_s": 0.1},
        worker={"poll_interval_s": 0.1},
    )
    add_test_users(service.db)
    _send_folder(service.scp.port, study)
    deadline, verdict = time.monotonic() + 240, None
    while verdict is None and time.monotonic() < deadline:
        time.sleep(0.3)
        with service.db.reading() as session:
            verdict = session.scalars(select(Verdict)).one_or_none()
    assert verdict is not None and verdict.outcome == "tampered", verdict and verdict.reason
    study_id = verdict.study_id
    base = f"http://127.0.0.1:{service.http.port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/login")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", PASSWORDS["alice"])
        page.click("button[type=submit]")
        page.goto(f"{base}/studies/{study_id}")
        expect(page.locator("#verdict")).to_have_text("tampered")
        cards = page.locator("article.finding")
        assert cards.count() >= 1
        card = cards.first
        for img in (card.locator("img.crop").first, card.locator("img.crop.heat")):
            img.scroll_into_view_if_needed()
            page.wait_for_function(
                "i => i.complete && i.naturalWidth > 0", arg=img.element_handle()
            )
        expect(card.locator(".heat-scale .bar")).to_be_visible()
        evidence = card.locator("table.scores").inner_text()
        assert "exact-repeat" in evidence and "noise-consistency" in evidence
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(300)
        _no_sideways_scroll(page)
        total = sum(
            page.evaluate(
                """() => performance.getEntries()
                    .filter(e => e.entryType === 'navigation' || e.entryType === 'resource')
                    .map(e => e.encodedBodySize)"""
            )
        )
        assert total < MAX_PAGE_BYTES
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_function(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        shots = {"admin-study.png": tmp_path / "study.png"}
        page.screenshot(path=str(shots["admin-study.png"]), full_page=True)
        page.goto(f"{base}/")
        expect(page.locator("#status")).not_to_contain_text("All clear")  # a tampered study
        _no_sideways_scroll(page)
        shots["admin-dashboard.png"] = tmp_path / "dashboard.png"
        page.screenshot(path=str(shots["admin-dashboard.png"]), full_page=True)
        page.goto(f"{base}/audit")
        expect(page.locator("table.audit")).to_contain_text("verdict.recorded")
        _no_sideways_scroll(page)
        shots["admin-audit.png"] = tmp_path / "audit.png"
        page.screenshot(path=str(shots["admin-audit.png"]), full_page=False)
        browser.close()
    for shot in shots.values():
        assert shot.stat().st_size > 10_000
    if os.environ.get("TAMPERSCAN_UPDATE_DOCS") == "1":
        for name, shot in shots.items():
            shutil.copyfile(shot, REPO / "docs" / name)
