"""The dashboard: static files in the package (web/), served at `/` by the API server itself.

The page is plain HTML, CSS and JavaScript modules, with no build step and nothing fetched from
another host (the Content-Security-Policy below forbids it). It calls only the public HTTP API with
the user's key as the bearer token, so whatever it does, a script can do too.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).with_name("web")
# Same-origin only; inline styles for the embedded evaluation report (it ships its CSS inline), data:/blob: images.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-src 'self' blob: data:; object-src 'none'; base-uri 'none'; form-action 'self'")


def install_dashboard_and_api(app: FastAPI, registry, jobs, runs_dir: str | None, api_key_required: bool) -> None:
    """The API the dashboard needs beyond OpenAI's (data check, runs, exports, job preview), then the page itself."""
    import os
    import tempfile

    from .data_routes import add_data_routes
    from .runs_exports import Exporter, add_export_routes
    from .runs_routes import RunIndex, add_run_routes

    add_data_routes(app, registry)
    index = RunIndex(runs_dir, jobs)
    add_run_routes(app, index)
    # the jobs' folder when there is one; else a per-process temporary folder, made only when something is exported
    exports_root = jobs.store.root / "exports" if jobs is not None else Path(tempfile.gettempdir()) / f"tunewright-exports-{os.getpid()}"
    add_export_routes(app, index, Exporter(exports_root))
    if jobs is not None:
        from .jobs_preview import add_preview_route

        add_preview_route(app, jobs)
    install_dashboard(app, api_key_required)


def install_dashboard(app: FastAPI, api_key_required: bool) -> None:
    """`/` is the page, `/dashboard/*` its files, `/dashboard/config.json` whether it must ask for a key."""

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB / "index.html", media_type="text/html", headers={"Content-Security-Policy": CSP,
                                                                                 "Cache-Control": "no-cache"})

    @app.get("/dashboard/config.json", include_in_schema=False)
    def config():
        return {"api_key_required": api_key_required}

    app.mount("/dashboard", StaticFiles(directory=WEB), name="dashboard")
