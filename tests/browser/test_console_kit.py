"""The console on the kit demo's service (real LFW faces, the kit MobileFaceNet, the demo's
gallery and transformer) in headless Chromium: a kit photo comes back as the right person, the
overview's first meaningful paint is measured, and (FACEBRIDGE_CONSOLE_SCREENSHOTS=docs/img)
the README's screenshots are taken."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from e2e.conftest import Server, server_env

from .conftest import ADMIN, ADMIN_KEY, Browser, make_browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.kit,
    pytest.mark.dlib,
    pytest.mark.slow,
]

PAINT_RUNS = 5
SHADOW_PROBES = 64


@dataclass
class KitConsole:
    server: Server
    versions: dict[str, str]  # recipe -> version
    photo: Path  # a kit photo (not the enrolled image) the service identifies correctly
    expected: str
    aligned_probes: list[Path]


def _upload(client: httpx.Client, path: Path, *, activate: bool) -> str:
    with path.open("rb") as fh:
        response = client.post(
            "/v1/admin/transformers",
            files={"file": (path.name, fh, "application/octet-stream")},
            data={"activate": str(activate).lower()},
            headers=ADMIN,
        )
    assert response.status_code == 201, response.text
    return response.json()["version"]


def _first_correct_photo(client: httpx.Client, photos: Path, probes: list) -> tuple[Path, str]:
    for name, path in probes[:20]:
        photo = photos / path
        reply = client.post(
            "/v1/identify",
            files=[("image", (photo.name, photo.read_bytes(), "image/jpeg"))],
            headers=ADMIN,
        )
        match = reply.json()["results"][0]["match"] if reply.status_code == 200 else None
        if match is not None and match["name"] == name:
            return photo, name
    raise AssertionError("none of the first 20 kit probe photos was identified correctly")


@pytest.fixture(scope="module")
def kit_console(kit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KitConsole]:
    pytest.importorskip("torch", reason="fitting the demo's transformers needs the train extra")
    from service.contracts import KIT_OLD_MODEL_ID, load_pairs
    from service.inference.detect import dlib_available
    from training.demo.fitting import fit_recipe
    from training.demo.service_side import gallery_and_probes

    if not dlib_available():
        pytest.skip("kit photos need the dlib detector (the [detect] extra)")
    root = tmp_path_factory.mktemp("console-kit")
    pairs_path = kit_dir / "lfw" / "pairs.npz"
    gallery, _, probes = gallery_and_probes(load_pairs(pairs_path).select_split("eval"))
    gallery_file = root / "gallery.npz"
    np.savez(gallery_file, old=gallery.old, name=gallery.name, path=gallery.path)
    files = {
        recipe: fit_recipe(pairs_path=pairs_path, output=root / f"{recipe}.onnx", recipe=recipe)
        for recipe in ("default", "ridge")
    }
    server = Server(
        workdir=root / "server",
        env=server_env(
            root / "server",
            manifest=kit_dir / "models" / "mobilefacenet.json",
            gallery_model_id=KIT_OLD_MODEL_ID,
            FACEBRIDGE_DETECTOR="dlib",
        ),
    )
    try:
        server.start()
        with server.client() as client:
            with gallery_file.open("rb") as fh:
                imported = client.post(
                    "/v1/gallery/import",
                    files={"file": ("gallery.npz", fh, "application/octet-stream")},
                    headers=ADMIN,
                )
            assert imported.status_code == 200, imported.text
            versions = {
                recipe: _upload(client, path, activate=recipe == "default")
                for recipe, path in files.items()
            }
            photo, expected = _first_correct_photo(client, kit_dir / "lfw" / "photos", probes)
        aligned = [kit_dir / "lfw" / "aligned" / path for _, path in probes[:SHADOW_PROBES]]
        yield KitConsole(server, versions, photo, expected, aligned)
    finally:
        server.kill()


@pytest.fixture(scope="module")
def kit_browser(kit_console: KitConsole) -> Iterator[Browser]:
    yield from make_browser(kit_console.server.url)


def _paint_times(browser: Browser) -> dict[str, float]:
    browser.driver.refresh()  # a fresh document, already signed in (session storage)
    browser.wait_css("#overview[data-ready='true']")
    browser.wait(
        lambda d: d.execute_script(
            "return performance.getEntriesByName('facebridge:overview-painted').length"
        )
    )
    return browser.driver.execute_script(
        """const at = (name) => (performance.getEntriesByName(name)[0] || {}).startTime;
        return {fcp: at('first-contentful-paint'), ready: at('facebridge:overview-ready'),
                painted: at('facebridge:overview-painted')};"""
    )


def test_kit_photo_identified_and_overview_painted(
    kit_browser: Browser, kit_console: KitConsole
) -> None:
    browser = kit_browser
    browser.open("/console")
    browser.wait_css("#signin-key")
    browser.screenshot("console-signin")
    browser.sign_in(ADMIN_KEY)
    browser.open("/console#/overview")
    runs = [_paint_times(browser) for _ in range(PAINT_RUNS)]
    painted = sorted(run["painted"] for run in runs)
    print(
        f"\nconsole overview on the kit demo ({PAINT_RUNS} loads): first contentful paint "
        f"median {statistics.median(r['fcp'] for r in runs):.0f} ms; first meaningful paint "
        f"(every card drawn with data) median {statistics.median(painted):.0f} ms, "
        f"min {painted[0]:.0f}, max {painted[-1]:.0f}"
    )
    assert browser.css("#overview-identities").text.endswith("1431")
    assert browser.foreign_requests() == ([], [])
    browser.screenshot("console-overview")

    browser.open("/console#/try")
    browser.wait_css("#try-file").send_keys(str(kit_console.photo))
    assert browser.wait_css("#try-match-name", timeout=60).text == kit_console.expected
    assert browser.css("#try-crop img").get_attribute("src").startswith("data:image/png")
    assert "detected in a 250×250 image" in browser.css("#try-crop").text
    browser.screenshot("console-try")

    browser.open("/console#/identities")
    browser.wait_css("#search-name").send_keys(kit_console.expected.split("_")[0])
    browser.click("#identity-search button")
    browser.click("#identity-table tbody tr td.name", text=kit_console.expected)
    assert "legacy" in browser.wait_css("#identity-faces").text
    browser.screenshot("console-identities")

    ridge = kit_console.versions["ridge"]
    browser.open("/console#/transformers")
    browser.click(f"button[data-action='shadow'][data-version='{ridge}']")
    browser.wait_css("#ask-sample_rate").send_keys("1")
    browser.css("#ask-confirm").click()
    browser.wait_css("#shadow-figures")
    with httpx.Client(base_url=kit_console.server.url, headers=ADMIN, timeout=60) as client:
        for start in range(0, len(kit_console.aligned_probes), 16):
            chunk = kit_console.aligned_probes[start : start + 16]
            files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk]
            assert client.post("/v1/identify", files=files).status_code == 200
    browser.wait_css("#shadow-images", text=str(len(kit_console.aligned_probes)), timeout=60)
    browser.screenshot("console-transformers")
    assert browser.foreign_requests() == ([], [])

    browser.open("/console#/migration")
    browser.wait_css("#migration-spaces")  # GET /v1/migration: the old space + the native one
    browser.screenshot("console-migration")
    assert browser.foreign_requests() == ([], [])
