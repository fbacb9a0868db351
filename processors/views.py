"""The worker's HTTP endpoints: Prometheus metrics and health."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from processors.runtime import Runtime


def register_views(app: faust.App, rt: Runtime) -> None:
    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(rt.metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    @app.page("/health/live")
    async def live_view(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/health/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        ready = rt.settings.ready
        return web.json({"ready": ready, "settings_ready": rt.settings.ready}, status=200 if ready else 503)
