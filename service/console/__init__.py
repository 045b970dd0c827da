"""The operator console at /console: plain HTML, CSS and JavaScript modules shipped inside the
package (``static/``), no third-party code, no CDN, no build step.

The page signs in with an API key kept in ``sessionStorage`` and calls the same JSON API as any
client (header ``X-API-Key``); admin pages are hidden for other scopes and the API refuses them
anyway (403). A strict Content-Security-Policy lets the page talk to this origin only.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

CONSOLE_URL = "/console"
ASSETS_URL = "/console/static"
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    # The camera for "Try it"; nothing else.
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
}

router = APIRouter(include_in_schema=False)


def static_dir() -> Path:
    return Path(str(files("service.console") / "static"))


@router.get("/")
async def root() -> RedirectResponse:
    """A person opening the service's address lands on the console."""
    return RedirectResponse(CONSOLE_URL, status_code=307)


@router.get(CONSOLE_URL)
@router.get(CONSOLE_URL + "/")
async def console() -> FileResponse:
    return FileResponse(static_dir() / "index.html", headers=SECURITY_HEADERS)


def install_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=static_dir()), name="console-static")
