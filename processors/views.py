"""The worker's HTTP endpoints: Prometheus metrics, liveness, readiness and sync history."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from processors.history import KEEP_DAYS
from processors.runtime import Runtime, now_ms


def readiness(
    *, settings_ready: bool, stages_running: bool, assigned: bool, recovered: bool, rebalancing: bool
) -> dict[str, bool]:
    """Ready = the settings replica caught up, every stage's consumer has joined its group, and the
    Faust consumer holds partitions whose tables are recovered (no rebalance under way): only then
    are decisions and history answers current."""
    checks = {
        "settings_ready": settings_ready,
        "stages_running": stages_running,
        "partitions_assigned": assigned,
        "tables_recovered": recovered,
        "rebalancing": rebalancing,
    }
    return {"ready": settings_ready and stages_running and assigned and recovered and not rebalancing, **checks}


def app_readiness(app: faust.App, rt: Runtime) -> dict[str, bool]:
    try:
        assigned = bool(app.consumer.assignment())
    except Exception:  # the consumer is not started yet
        assigned = False
    return readiness(
        settings_ready=rt.settings.ready,
        stages_running=bool(rt.stages) and all(stage.running for stage in rt.stages),
        assigned=assigned,
        recovered=app.tables.recovery.completed.is_set(),
        rebalancing=bool(app.rebalancing),
    )


def parse_days(text: str | None) -> int:
    days = int(text) if text not in (None, "") else KEEP_DAYS
    if not 1 <= days <= KEEP_DAYS:
        raise ValueError(f"days must be between 1 and {KEEP_DAYS}")
    return days


def register_views(app: faust.App, rt: Runtime) -> None:
    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        rt.metrics.ready.set(1 if app_readiness(app, rt)["ready"] else 0)
        # as a header: aiohttp refuses a content_type argument that carries a charset
        return web.bytes(rt.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health/live")
    async def live_view(web: Any, request: Any) -> Any:
        """Answering at all is the proof: the event loop runs."""
        return web.json({"status": "ok"})

    @app.page("/health/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        state = app_readiness(app, rt)
        return web.json(state, status=200 if state["ready"] else 503)

    async def history_here(web: Any, request: Any) -> Any:
        company = request.query["company"]
        return web.json(rt.history.report(company, parse_days(request.query.get("days")), now_ms()))

    routed = app.table_route(table=rt.history.table, query_param="company")(history_here)

    @app.page("/history")
    async def history_view(web: Any, request: Any) -> Any:
        """`?company=C&days=N` (N 1..7, default 7); answered by the worker holding C's partition."""
        if not request.query.get("company"):
            return web.json({"error": "the company query parameter is required"}, status=400)
        try:
            parse_days(request.query.get("days"))
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        return await routed(web, request)
