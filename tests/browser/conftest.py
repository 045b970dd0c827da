"""Browser fixtures: the system's headless Chromium driven by selenium through the system's
chromedriver (Debian's ``chromium`` and ``chromium-driver``; ``.ci/run`` and ``make browser``
install them). Nothing downloads a browser or a driver: selenium is pointed at both binaries
and its driver manager is switched off (``SE_OFFLINE``).

Without Chromium the tests skip with the reason, except in CI (``CI`` set), where they fail:
CI must run them. Servers are real uvicorn processes (``tests/e2e``'s :class:`Server`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from api.onnx_fixtures import (
    TINY_OLD_MODEL_ID,
    png_bytes,
    random_rotation,
    write_matrix_transformer,
    write_tiny_backbone,
)
from e2e.conftest import ADMIN, ADMIN_KEY, Server, server_env

CHROMIUM = Path(os.environ.get("FACEBRIDGE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FACEBRIDGE_CHROMEDRIVER", "/usr/bin/chromedriver"))
WAIT_S = 20.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--window-size=1280,900",
    # "Try it"'s webcam: a synthetic camera, granted without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
)
SYNTHETIC_PEOPLE = 3
NETWORK_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    reason = (
        f"Chromium not installed ({', '.join(missing)} missing): "
        "`make browser` or `apt-get install chromium chromium-driver`"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {reason}")
    pytest.skip(reason)


@dataclass
class Browser:
    """One Chromium with a fresh profile, and helpers the tests share."""

    driver: Any
    base_url: str

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def wait(self, condition: Callable[[Any], Any], *, timeout: float = WAIT_S) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def wait_css(self, selector: str, *, text: str | None = None, timeout: float = WAIT_S) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        def found(driver: Any) -> Any:
            try:
                for element in driver.find_elements(By.CSS_SELECTOR, selector):
                    if element.is_displayed() and (text is None or text in element.text):
                        return element
            except StaleElementReferenceException:
                pass  # re-rendered while we looked: look again
            return False

        return self.wait(found, timeout=timeout)

    def click(self, selector: str, *, text: str | None = None) -> None:
        """Click the visible element, again if the page re-rendered it meanwhile (pages refresh
        their data every few seconds)."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(5):
            try:
                self.wait_css(selector, text=text).click()
                return
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{selector} kept going stale")

    def sign_in(self, key: str) -> None:
        self.open("/console")
        self.wait_css("#signin-key").send_keys(key)
        self.css("#signin-submit").click()
        self.wait_css("#nav a")

    def _network_log(self) -> list[tuple[str, str | None]]:
        """(url, blocked reason or None) of every request the browser started since the last
        call, in every tab (Chrome DevTools network events)."""
        started: dict[str, str] = {}
        blocked: dict[str, str] = {}
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message.get("method") == "Network.requestWillBeSent":
                started[params["requestId"]] = params["request"]["url"]
            elif message.get("method") == "Network.loadingFailed" and params.get("blockedReason"):
                blocked[params["requestId"]] = params["blockedReason"]
        return [(url, blocked.get(request_id)) for request_id, url in started.items()]

    def requested_urls(self) -> list[str]:
        """Every URL the browser asked for since the last call."""
        return [url for url, _ in self._network_log()]

    def foreign_requests(self) -> tuple[list[str], list[str]]:
        """(sent, blocked): network requests (http, https, ws, wss) to any host other than the
        service, from the DevTools log of every tab and the page's resource timing entries;
        ``blocked`` = attempts the page's Content-Security-Policy stopped before they left the
        machine. Chromium's own chrome:// pages and data:/blob: URLs are not network."""
        own = urlsplit(self.base_url).netloc

        def foreign(url: str) -> bool:
            parts = urlsplit(url)
            return parts.scheme in NETWORK_SCHEMES and parts.netloc != own

        log = [(url, reason) for url, reason in self._network_log() if foreign(url)]
        blocked = sorted({url for url, reason in log if reason is not None})
        sent = {url for url, reason in log if reason is None}
        resources = self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        sent |= {url for url in resources if foreign(url) and url not in blocked}
        return sorted(sent), blocked

    def screenshot(self, name: str) -> Path | None:
        """Save a screenshot when FACEBRIDGE_CONSOLE_SCREENSHOTS names a directory."""
        target = os.environ.get("FACEBRIDGE_CONSOLE_SCREENSHOTS")
        if not target:
            return None
        path = Path(target) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = self.driver.get_window_size()
        # The window's height is the page's plus the browser's own chrome around it.
        height = self.driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
            " + window.outerHeight - window.innerHeight"
        )
        self.driver.set_window_size(size["width"], min(max(int(height), 600), 2200))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(size["width"], size["height"])
        return path


def make_browser(base_url: str) -> Iterator[Browser]:
    _require_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium's driver manager never downloads
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="facebridge-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield Browser(driver=driver, base_url=base_url)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# A synthetic service: tiny ONNX backbone, two rotation transformers, three enrolled people
# ---------------------------------------------------------------------------------------------
@dataclass
class ConsoleServer:
    server: Server
    versions: dict[str, str]
    identify_key: str
    images: dict[str, Path]  # person name -> an image file of them (aligned 112x112 PNG)


@pytest.fixture(scope="module")
def synthetic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    _require_browser()
    root = tmp_path_factory.mktemp("console-synthetic")
    manifest = write_tiny_backbone(root / "backbone")
    files = {
        name: write_matrix_transformer(
            root / f"{name}.onnx", matrix=random_rotation(16, seed=seed), recipe=f"rotation-{name}"
        )
        for name, seed in (("a", 1), ("b", 2))
    }
    server = Server(
        workdir=root / "server",
        env=server_env(
            root / "server",
            manifest=manifest,
            gallery_model_id=TINY_OLD_MODEL_ID,
            FACEBRIDGE_GALLERY_DIM="16",
            FACEBRIDGE_SHADOW_SAMPLE_RATE="1.0",
            FACEBRIDGE_FACE_CHECK="off",  # the tiny backbone's inputs are noise, not faces
        ),
    )
    try:
        server.start()
        with server.client() as client:
            versions = {}
            for name, path in files.items():
                with path.open("rb") as fh:
                    response = client.post(
                        "/v1/admin/transformers",
                        files={"file": (path.name, fh, "application/octet-stream")},
                        data={"activate": str(name == "a").lower()},
                        headers=ADMIN,
                    )
                assert response.status_code == 201, response.text
                versions[name] = response.json()["version"]
            images = {}
            for seed in range(SYNTHETIC_PEOPLE):
                name = f"Person {seed}"
                images[name] = root / f"person-{seed}.png"
                images[name].write_bytes(png_bytes(seed))
                created = client.post(
                    "/v1/identities", json={"name": name, "external_id": f"p-{seed}"}, headers=ADMIN
                ).json()
                with images[name].open("rb") as fh:
                    face = client.post(
                        f"/v1/identities/{created['id']}/faces",
                        files=[("image", (images[name].name, fh, "image/png"))],
                        headers=ADMIN,
                    )
                assert face.status_code == 201, face.text
            key = client.post(
                "/v1/admin/keys", json={"name": "kiosk", "scopes": ["identify"]}, headers=ADMIN
            ).json()["key"]
        yield ConsoleServer(server=server, versions=versions, identify_key=key, images=images)
    finally:
        server.kill()


@pytest.fixture
def browser(synthetic_server: ConsoleServer) -> Iterator[Browser]:
    yield from make_browser(synthetic_server.server.url)


def wait_until(check: Callable[[], bool], *, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def active_version(server: Server) -> str | None:
    return httpx.get(f"{server.url}/v1/admin/transformers", headers=ADMIN, timeout=10).json()[
        "active"
    ]


__all__ = ["ADMIN", "ADMIN_KEY", "Browser", "ConsoleServer", "make_browser", "wait_until"]
