"""The web console at `/console/`: status at a glance and the playground, in Chinese.

Server-rendered Jinja2 pages with htmx (vendored under `static/`, as every asset is: the
console works where nothing outside can be reached), on top of the public HTTP API; see
`agent.console.pages`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from agent.console.pages import STATIC_DIR, router


def install(app: FastAPI) -> None:
    """Serve the console's pages, fragments and files from `app`."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
