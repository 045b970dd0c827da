"""What the console is served with: the page and its assets from the package, offline /docs and
/redoc, the caller's key (whoami), the face crop (detect), outcome counters; the browser tests
(tests/browser) drive the same routes in Chromium."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from .conftest import ADMIN, assert_problem, create_key, image_part

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.IGNORECASE)


def test_root_opens_the_console_with_a_strict_policy(client: TestClient) -> None:
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/console"
    page = client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert "'unsafe-inline'" not in policy and "http" not in policy
    assert not EXTERNAL.search(page.text)
    assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text)
    assert assets, "the page loads its scripts and styles from the package"
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert not EXTERNAL.search(response.text), asset


def test_console_scripts_never_put_the_key_in_a_url(client: TestClient) -> None:
    """sessionStorage only; the sign-in input has no name (a plain form submit could not put
    it in a query string) and every request carries it in the X-API-Key header."""
    page = client.get("/console").text
    key_input = re.search(r"<input[^>]*id=\"signin-key\"[^>]*>", page)
    assert key_input and "name=" not in key_input.group(0)
    scripts = "".join(
        client.get(src).text for src in re.findall(r'src="(/console/static/[^"]+)"', page)
    )
    imports = re.findall(r"from\s+\"\./([^\"]+)\"", scripts)
    scripts += "".join(client.get(f"/console/static/{name}").text for name in set(imports))
    assert "sessionStorage" in scripts and "localStorage" not in scripts
    assert "X-API-Key" in scripts
    assert not re.search(r"[?&](api_?key|key)=", scripts, re.IGNORECASE)


@pytest.mark.parametrize(
    ("path", "asset"),
    [
        ("/docs", "/docs/assets/swagger-ui-bundle.js"),
        ("/redoc", "/docs/assets/redoc.standalone.js"),
    ],
)
def test_docs_load_their_assets_from_the_package(client: TestClient, path: str, asset: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert not EXTERNAL.search(page.text), page.text
    assert "fonts.googleapis" not in page.text and "cdn." not in page.text
    assert asset in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    script = client.get(asset)
    assert script.status_code == 200 and len(script.content) > 100_000
    assert "/openapi.json" in page.text and client.get("/openapi.json").status_code == 200


def test_whoami_names_the_key_and_its_scopes(client: TestClient) -> None:
    me = client.get("/v1/whoami", headers=ADMIN).json()
    assert me["admin"] is True and me["scopes"] == ["admin"] and "key" not in me
    kiosk = create_key(client, "identify")
    me = client.get("/v1/whoami", headers=kiosk).json()
    assert me["admin"] is False and me["scopes"] == ["identify"]
    assert_problem(client.get("/v1/whoami"), 401, "unauthorized")
    assert_problem(client.get("/v1/whoami", headers={"X-API-Key": "fb_x_y"}), 401)


def test_detect_returns_the_crop_identify_embeds(client: TestClient, keys: dict) -> None:
    _, (filename, data, media) = image_part(3)
    response = client.post(
        "/v1/faces/detect", files=[("image", (filename, data, media))], headers=keys["identify"]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["aligned_input"] is True and (body["width"], body["height"]) == (112, 112)
    (face,) = body["faces"]
    assert face["used_by_identify"] and face["box"] is None
    png = base64.b64decode(face["crop"].removeprefix("data:image/png;base64,"))
    crop = Image.open(io.BytesIO(png))
    assert crop.size == (112, 112)
    assert np.array_equal(
        np.asarray(crop.convert("RGB")), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    )
    photo = io.BytesIO()
    Image.new("RGB", (300, 200), (90, 120, 150)).save(photo, format="JPEG")
    refused = client.post(
        "/v1/faces/detect",
        files=[("image", ("photo.jpg", photo.getvalue(), "image/jpeg"))],
        headers=keys["identify"],
    )
    assert_problem(refused, 422)  # no detector in these tests: a photo is refused clearly
    assert_problem(client.post("/v1/faces/detect", files=[image_part(1)]), 401)
    assert_problem(
        client.post("/v1/faces/detect", files=[image_part(1)], headers=keys["enrol"]), 403
    )


def test_identify_outcomes_are_counted(client: TestClient, enrolled, keys: dict) -> None:
    enrolled(2)
    client.post("/v1/identify", files=[image_part(0), image_part(1)], headers=keys["identify"])
    client.post("/v1/identify", files=[image_part(50)], headers=ADMIN)  # a stranger
    text = client.get("/metrics").text
    version = client.get("/v1/admin/transformers", headers=ADMIN).json()["active"]
    counted = "facebridge_identify_decisions_total{{decision={!r},transformer={!r}}}"
    assert counted.format("match", version).replace("'", '"') + " 2.0" in text
    assert counted.format("no_match", version).replace("'", '"') + " 1.0" in text
