"""The admin report in a real headless Chromium (Debian ``chromium``, driven by Playwright).

Logs in, opens the flagged phantom study from the list, checks the region overlay image really
rendered, marks the region confirmed tampered, and takes a screenshot (with
TAMPERSCAN_UPDATE_DOCS=1 it replaces the one in docs/).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.admin_helpers import (
    PASSWORDS,
    add_test_users,
    record_flagged_verdict,
    store_phantom_study,
)
from tests.dicom_helpers import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]


def test_login_open_flagged_study_mark_region_and_screenshot(
    service_factory: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    service = service_factory(worker={"enabled": False})
    add_test_users(service.db)
    study_id = store_phantom_study(service.store, tmp_path / "phantoms", slices=6)
    record_flagged_verdict(service.db, service.settings.storage.data_dir, study_id)
    base = f"http://127.0.0.1:{service.http.port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{base}/studies")
        assert "/login" in page.url  # anonymous: sent to the login form
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", PASSWORDS["alice"])
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/studies")
        page.select_option("select[name=verdict]", "tampered")
        page.click("form.filters button")
        page.click(f"a[href='/studies/{study_id}']")
        expect(page.locator("#verdict")).to_have_text("tampered")
        overlay = page.locator("article.region.flagged img").first
        expect(overlay).to_be_visible()
        natural = overlay.evaluate("img => [img.complete, img.naturalWidth]")
        assert natural == [True, 256], natural  # the server-rendered overlay really loaded
        page.locator("article.region.flagged button.mark-tampered").first.click()
        expect(page.locator(".flash.ok")).to_contain_text("marked confirmed tampered")
        expect(page.locator("article.region.flagged .region-mark").first).to_have_text(
            "confirmed tampered"
        )
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_function(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        shot = tmp_path / "admin-study.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("TAMPERSCAN_UPDATE_DOCS") == "1":  # refresh the README's screenshot
        shutil.copyfile(shot, REPO / "docs" / "admin-study.png")
