"""The worker's HTTP endpoints: Prometheus metrics, liveness, readiness and sync history.

`/metrics` and `/health/*` are always open (probes and Prometheus); company data (`/history`) needs
the bearer token whenever the server listens beyond loopback."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from processors.config import Config
from processors.domain.history import KEEP_DAYS
from processors.state.history import history_from_topic
from processors.worker.runtime import Runtime


def readiness(*, settings_ready: bool, stages_running: bool, ingest_processes_ready: bool = True) -> dict[str, bool]:
    """Ready = the settings table was read to its end (read_committed), so was every ingest process's
    (`CRM_SYNC_INGEST_PROCESSES`; true without them), and every stage's consumer has joined its
    group and settled its assignment (a sink's ledger read to its end, `processors.kafka.consumer.
    Settling`). Holding partitions is not required: a worker that the group gave none (more workers than
    partitions) is a ready standby."""
    return {
        "ready": settings_ready and stages_running and ingest_processes_ready,
        "settings_ready": settings_ready,
        "stages_running": stages_running,
        "ingest_processes_ready": ingest_processes_ready,
    }


def app_readiness(rt: Runtime) -> dict[str, bool]:
    return readiness(
        settings_ready=rt.settings.ready,
        stages_running=bool(rt.stages) and all(stage.running for stage in rt.stages),
        ingest_processes_ready=rt.ingest_pool is None or rt.ingest_pool.ready,
    )


def parse_days(text: str | None) -> int:
    days = int(text) if text not in (None, "") else KEEP_DAYS
    if not 1 <= days <= KEEP_DAYS:
        raise ValueError(f"days must be between 1 and {KEEP_DAYS}")
    return days


def authorized(config: Config, header: str | None) -> bool:
    """Company data: open on a loopback bind, else only with `Authorization: Bearer <CRM_SYNC_HTTP_TOKEN>`."""
    if config.http_loopback:
        return True
    scheme, _, token = (header or "").partition(" ")
    return bool(config.http_token) and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), config.http_token.encode())


def register_views(app: faust.App, rt: Runtime) -> None:
    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        rt.metrics.ready.set(1 if app_readiness(rt)["ready"] else 0)
        # as a header: aiohttp refuses a content_type argument that carries a charset
        return web.bytes(rt.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health/live")
    async def live_view(web: Any, request: Any) -> Any:
        """Answering at all is the proof: the event loop runs."""
        return web.json({"status": "ok"})

    @app.page("/health/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        state = app_readiness(rt)
        return web.json(state, status=200 if state["ready"] else 503)

    @app.page("/history")
    async def history_view(web: Any, request: Any) -> Any:
        """`?company=C&days=N` (N 1..7, default 7): read from the history topic, like the CLI."""
        if not authorized(rt.config, request.headers.get("Authorization")):
            return web.json({"error": "a bearer token (CRM_SYNC_HTTP_TOKEN) is required"}, status=401, headers={"WWW-Authenticate": "Bearer"})
        company = request.query.get("company")
        if not company:
            return web.json({"error": "the company query parameter is required"}, status=400)
        try:
            days = parse_days(request.query.get("days"))
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        settings = rt.settings.company(company)
        tz = settings.timezone if settings is not None else None
        body = await asyncio.get_running_loop().run_in_executor(
            None, history_from_topic, rt.config, company, days, int(time.time() * 1000), tz
        )
        return web.json(body)
