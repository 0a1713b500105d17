"""The ASGI application: operational endpoints here, feature routers mounted from their modules."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from refresher.server.runtime import Runtime

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    """A 405 whose ``Allow`` names every method of the path. Starlette lists only the methods of the first
    route whose path matched, and a path may be served by several (GET and DELETE of one account)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    # Ask each route whether it would take the request under each method: only the public ``matches``,
    # which also sees into included routers.
    allowed = {
        method
        for method in _METHODS
        for route in request.app.router.routes
        if route.matches({**request.scope, "method": method})[0] is Match.FULL
    }
    if not allowed:
        return await http_exception_handler(request, exc)
    return JSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(sorted(allowed))}
    )


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="refresher",
        version=_version(),
        description="Keeps e-commerce OAuth tokens alive; hands them to the services that need them.",
        docs_url="/docs",  # Swagger UI of the token API, linked from the console
        redoc_url=None,
    )
    app.add_exception_handler(HTTPException, _method_not_allowed)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """The process is alive and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        """Ready to work: the store answers and the scheduler runs."""
        problems = await runtime.readiness()
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = runtime.metrics_payload()
        return Response(body, media_type=content_type)

    from refresher.server import api, proxy  # token API and signing proxy (issue 6)

    app.state.runtime = runtime  # read by refresher.server.auth.get_runtime
    api.install(app)
    proxy.install(app)
    from refresher.server import onboarding  # connect/callback (issue 5)

    app.include_router(onboarding.router(runtime))
    from refresher.server import ui  # the operator console (issue 15)

    ui.install(app)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refresher")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
