"""The operator console in real headless Chromium against a real uvicorn process (synthetic
service: tiny ONNX backbone, rotation transformers; no kit needed)."""

from __future__ import annotations

import httpx
import pytest

from .conftest import ADMIN, ADMIN_KEY, Browser, ConsoleServer, active_version

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_sign_in_identify_and_see_the_right_name(
    browser: Browser, synthetic_server: ConsoleServer
) -> None:
    browser.sign_in(ADMIN_KEY)
    browser.wait_css("#overview[data-ready='true']")
    assert browser.css("#overview-identities").text.endswith("3")
    browser.open("/console#/try")
    browser.wait_css("#try-file").send_keys(str(synthetic_server.images["Person 1"]))
    assert browser.wait_css("#try-match-name").text == "Person 1"
    assert browser.css("#try-candidates tbody tr.top td.name").text == "Person 1"
    assert browser.css("#try-crop img").get_attribute("src").startswith("data:image/png")
    assert "embed" in browser.css("#try-timings").text
    # The webcam (Chromium's synthetic camera): a frame goes to the service, which answers
    # that a 640x480 frame is not an aligned crop (this service has no detector).
    browser.css("#try-webcam").click()
    browser.wait(lambda d: browser.css("#try-capture").is_enabled())
    browser.css("#try-capture").click()
    assert "no detector" in browser.wait_css("#try-error").text
    assert browser.foreign_requests() == ([], [])


def test_activate_and_roll_back_from_the_console(
    browser: Browser, synthetic_server: ConsoleServer
) -> None:
    server, versions = synthetic_server.server, synthetic_server.versions
    assert active_version(server) == versions["a"]
    browser.sign_in(ADMIN_KEY)
    browser.open("/console#/transformers")
    # Shadow b first: the promotion dialog then offers the figures.
    browser.click(f"button[data-action='shadow'][data-version='{versions['b']}']")
    browser.wait_css("#ask-sample_rate").send_keys("1")
    browser.css("#ask-confirm").click()
    browser.wait_css("#shadow-figures")
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as client:
        for image in synthetic_server.images.values():
            files = [("image", (image.name, image.read_bytes(), "image/png"))]
            assert client.post("/v1/identify", files=files).status_code == 200
    browser.wait_css("#shadow-images", text=str(len(synthetic_server.images)))
    browser.click(f"button[data-action='activate'][data-version='{versions['b']}']")
    assert "Shadow run" in browser.wait_css("#promotion-note").text
    browser.css("#ask-reason").send_keys("promoted from the console")
    browser.css("#ask-confirm").click()
    browser.wait_css(f"#transformers[data-active='{versions['b']}']")
    assert active_version(server) == versions["b"]

    browser.click("#tf-rollback", text=versions["a"])
    browser.css("#ask-reason").send_keys("rolled back from the console")
    browser.css("#ask-confirm").click()
    browser.wait_css(f"#transformers[data-active='{versions['a']}']")
    assert active_version(server) == versions["a"]
    audit = browser.wait_css("#tf-audit", text="rolled back from the console").text
    assert "promoted from the console" in audit and "shadow-start" in audit
    browser.screenshot("console-transformers")
    assert browser.foreign_requests() == ([], [])


def test_an_identify_key_sees_no_admin_page_and_the_api_refuses(
    browser: Browser, synthetic_server: ConsoleServer
) -> None:
    browser.sign_in(synthetic_server.identify_key)
    shown = {
        a.text for a in browser.driver.find_elements("css selector", "#nav a") if a.is_displayed()
    }
    assert shown == {"Overview", "Try it", "Identities"}
    browser.open("/console#/transformers")
    refusal = browser.wait_css("#refused").text
    assert "403" in refusal and "admin" in refusal
    # Not a UI decision: the page's own fetch with this key is refused by the service.
    status = browser.driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const key = sessionStorage.getItem('facebridge.key');
        fetch('/v1/admin/transformers', {headers: {'X-API-Key': key}}).then(r => done(r.status));"""
    )
    assert status == 403


def test_the_key_stays_in_session_storage(
    browser: Browser, synthetic_server: ConsoleServer
) -> None:
    browser.sign_in(ADMIN_KEY)
    browser.wait_css("#overview[data-ready='true']")
    browser.open("/console#/identities")
    browser.wait_css("#identity-table")
    storage = browser.driver.execute_script(
        "return [sessionStorage.getItem('facebridge.key'), localStorage.length, document.cookie]"
    )
    assert storage == [ADMIN_KEY, 0, ""]
    urls = [*browser.requested_urls(), browser.driver.current_url]
    assert urls and not [url for url in urls if ADMIN_KEY in url]
    assert ADMIN_KEY not in synthetic_server.server.log_path.read_text(errors="replace")
    browser.css("#signout").click()
    browser.wait_css("#signin-key")
    assert browser.driver.execute_script("return sessionStorage.length") == 0


def test_enrol_and_search_identities(browser: Browser, synthetic_server: ConsoleServer) -> None:
    from api.onnx_fixtures import png_bytes

    photo = synthetic_server.server.workdir / "newcomer.png"
    photo.write_bytes(png_bytes(77))
    browser.sign_in(ADMIN_KEY)
    browser.open("/console#/identities")
    browser.wait_css("#enrol-name").send_keys("Newcomer")
    browser.css("#enrol-photo").send_keys(str(photo))
    browser.click("#enrol-submit")
    browser.wait_css("#enrol-status", text="enrolled as identity")
    browser.css("#search-name").send_keys("newcomer")
    browser.css("#identity-search button").click()
    browser.click("#identity-table tbody tr td.name", text="Newcomer")
    assert "mapped" in browser.wait_css("#identity-faces").text
    with httpx.Client(base_url=synthetic_server.server.url, headers=ADMIN, timeout=30) as client:
        reply = client.post(
            "/v1/identify", files=[("image", ("n.png", photo.read_bytes(), "image/png"))]
        ).json()
    assert reply["results"][0]["match"]["name"] == "Newcomer"


@pytest.mark.parametrize(("path", "ready"), [("/docs", ".opblock"), ("/redoc", "h1")])
def test_api_docs_render_offline(browser: Browser, path: str, ready: str) -> None:
    browser.open(path)
    browser.wait_css(ready)
    assert "facebridge" in browser.driver.page_source
    sent, blocked = browser.foreign_requests()
    assert sent == []
    # ReDoc's bundle always asks for the "API docs by Redocly" logo; the page's policy stops it
    # before it leaves the machine, and ReDoc hides the image when it fails.
    assert set(blocked) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
