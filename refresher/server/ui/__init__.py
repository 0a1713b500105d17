"""The operator console under ``/ui`` (admin-token login) and its static files under ``/ui/static``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from refresher.server.ui import account, login, pages
from refresher.server.ui.render import STATIC


def install(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.include_router(login.router)
    app.include_router(pages.router)
    app.include_router(account.router)
