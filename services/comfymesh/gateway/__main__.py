"""`python -m comfymesh.gateway`: serve the REST API, ComfyUI's API and the web UI over HTTP."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from comfymesh import gctune, trace
from comfymesh.config import get_settings
from comfymesh.gateway.app import create_app
from comfymesh.gateway.auth import check_bind
from comfymesh.gateway.images import return_big_buffers_when_freed
from comfymesh.logs import setup_logging


def main() -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m comfymesh.gateway", description=__doc__)
    parser.add_argument("--host", default=settings.host, help="interface to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=settings.port, help="HTTP port (default %(default)s)")
    args = parser.parse_args()
    try:
        check_bind(args.host, settings)
    except ValueError as exc:
        sys.exit(f"comfymesh gateway: {exc}")
    setup_logging("gateway", settings.log_level, settings.log_json)
    trace.start_tracing("gateway")
    # the Host check accepts the name we were told to listen on
    app = create_app(settings.model_copy(update={"host": args.host, "port": args.port}))
    gctune.settle(gctune.parse_thresholds(settings.gc_thresholds))
    return_big_buffers_when_freed()
    print(f"comfymesh gateway listening on http://{args.host}:{args.port} "
          f"(API docs at /v1/docs, orchestrator {settings.orchestrator})", flush=True)
    # no access log: it would record `?token=` query strings (the auth middleware strips them for the app)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
