"""The report in a real browser: Debian's chromium, driven by playwright (``make test-browser``)."""

import shutil

import pytest

from helpers import run_analyses

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make test-browser)")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test-browser installs it)")
def test_report_renders_with_every_image_loaded(tmp_path, cli):
    run_analyses(tmp_path, "digits-branched8", "digits:test", ["activity", "covariance"])
    store = next(tmp_path.glob("*.zarr"))
    cli("report", store, "--out", tmp_path / "report")
    shot = tmp_path / "report.png"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed_requests = []
            page.on("requestfailed", lambda request: failed_requests.append(request.url))
            page.goto((tmp_path / "report" / "index.html").as_uri())
            page.wait_for_load_state("load")
            broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                                   ".map(i => i.src)")
            n_images = page.evaluate("document.images.length")
            height = page.evaluate("document.documentElement.scrollHeight")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert n_images == 4 and broken == [] and failed_requests == []
    assert height > 2000  # header, run table, two analyses with four figures
    assert shot.stat().st_size > 50_000
