"""The admin report in a real headless Chromium (Debian ``chromium``, driven by Playwright).

A 64-slice phantom CT with a real tamper-lab injection is stored through the storage layer and
given the verdict the scorer would record (regions on every slice, the injected discs flagged
with heatmaps, 3-D finding numbers). The test logs in, opens the study, finds the one finding
card with its crops, heatmap and colour scale, jumps the viewer to the flagged slice and
scrolls it, marks the finding confirmed tampered, and checks the page weight (< 2 MB with every
image it loads) and that no page scrolls sideways at 1,280 px. The screenshots in docs/ come
from tests/test_admin_real_study.py, where the real pipeline scored the study.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.admin_helpers import (
    PASSWORDS,
    add_pending_delivery,
    add_test_users,
    record_scored_verdict,
    resend_changed,
    store_tampered_study,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
MAX_PAGE_BYTES = 2_000_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]


def _no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{page.url} is {width[0]} px wide at {width[1]} px"


def test_triage_a_tampered_study_in_chromium(service_factory: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    service = service_factory(worker={"enabled": False})
    add_test_users(service.db)
    study_id, discs = store_tampered_study(service.store, tmp_path / "lab", slices=64)
    resend_changed(
        service.store, next((tmp_path / "lab" / "tampered").rglob("*.dcm")), "WS-07", "10.9.8.7"
    )
    record_scored_verdict(service.db, service.settings.storage.data_dir, study_id, discs)
    add_pending_delivery(service.db, age_s=18 * 60)
    base = f"http://127.0.0.1:{service.http.port}"
    loaded: dict[str, int] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/studies/{study_id}")
        assert "/login" in page.url  # anonymous: sent to the login form
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", PASSWORDS["alice"])
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/studies/{study_id}")

        page.reload()
        expect(page.locator("#verdict")).to_have_text("tampered")
        cards = page.locator("article.finding")
        expect(cards).to_have_count(1)  # seven flagged slices, one 3-D finding
        card = cards.first
        expect(card.locator("h3")).to_contain_text("slices ")
        expect(card.locator("h3")).to_contain_text("of 64")
        for img in (card.locator("img.crop").first, card.locator("img.crop.heat")):
            img.scroll_into_view_if_needed()
            expect(img).to_be_visible()
            page.wait_for_function(
                "i => i.complete && i.naturalWidth > 0", arg=img.element_handle()
            )
            assert img.evaluate("i => i.naturalWidth") == 192
        expect(card.locator(".heat-scale .bar")).to_be_visible()
        evidence = card.locator("table.scores").inner_text()
        assert "inpaint" in evidence and "btd" in evidence and "noise" in evidence

        # The viewer: flagged slices marked in the strip, jump to the finding, then scroll.
        expect(page.locator("#slice-strip a.flagged")).to_have_count(len(discs))
        card.locator("a.goto.button").click()
        shown = int(card.get_attribute("data-slice"))
        slice_img = page.locator("#slice")
        expect(slice_img).to_have_attribute("data-position", str(shown))
        expect(page.locator("#slice-label")).to_contain_text(f"slice {shown} of 64")
        expect(page.locator("#slice-label")).to_contain_text("flagged")
        page.wait_for_function("document.querySelector('#slice').naturalWidth > 0")
        expect(page.locator("#slice-overlay circle.flagged")).to_have_count(1)
        expect(page.locator("#slice-strip a.current")).to_have_class("flagged current")
        page.locator(".stage").hover()
        page.mouse.wheel(0, 120)
        expect(slice_img).to_have_attribute("data-position", str(shown + 1))
        page.keyboard.press("ArrowUp")
        expect(slice_img).to_have_attribute("data-position", str(shown))
        page.locator("#window-presets button[data-window=lung]").click()
        expect(slice_img).to_have_attribute("src", re.compile("window=lung"))
        page.wait_for_function("document.querySelector('#slice').complete")
        expect(page.locator("#provenance ~ h3.warn-text")).to_contain_text("replaced")

        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(300)
        _no_sideways_scroll(page)
        # Page weight: the document and everything it loaded, lazy images included.
        loaded.update(
            page.evaluate(
                """() => Object.fromEntries(performance.getEntries()
                    .filter(e => e.entryType === 'navigation' || e.entryType === 'resource')
                    .map(e => [e.name, e.encodedBodySize]))"""
            )
        )
        total = sum(loaded.values())
        assert total < MAX_PAGE_BYTES, f"study page loaded {total} bytes: {sorted(loaded.items())}"
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_function(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        shots = {"study": tmp_path / "study.png"}
        page.screenshot(path=str(shots["study"]), full_page=True)

        card.locator("button.mark-tampered").click()
        expect(page.locator(".flash.ok")).to_contain_text("marked confirmed tampered")
        expect(page.locator("article.finding .region-mark")).to_have_text("confirmed tampered")

        page.goto(f"{base}/")
        expect(page.locator("#tile-pending")).to_have_class("tile warn")
        expect(page.locator("#status")).to_contain_text("pending for more than 5 min")
        _no_sideways_scroll(page)
        shots["admin-dashboard.png"] = tmp_path / "dashboard.png"
        page.screenshot(path=str(shots["admin-dashboard.png"]), full_page=True)
        page.click("#tile-pending")
        expect(page.locator("table.studies tbody tr")).to_have_count(1)

        for path in ("/studies", "/models"):
            page.goto(f"{base}{path}")
            _no_sideways_scroll(page)
        page.goto(f"{base}/audit")
        expect(page.locator("table.audit")).to_contain_text("instance.replaced")
        expect(page.locator(f"table.audit a[href='/studies/{study_id}']").first).to_be_visible()
        _no_sideways_scroll(page)
        shots["admin-audit.png"] = tmp_path / "audit.png"
        page.screenshot(path=str(shots["admin-audit.png"]), full_page=False)
        browser.close()
    for shot in shots.values():
        assert shot.stat().st_size > 10_000
    # The docs' screenshots come from a really scored study: tests/test_admin_real_study.py.
