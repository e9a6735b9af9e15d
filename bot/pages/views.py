"""The HTML pages: ``/deployments`` (filterable list, with each environment's delivery numbers over 30 and 90 days)
and ``/deployments/{id}`` (header, timeline of hosts x lifecycle events, traffic chart, hosts-by-events grid, event
log in words), plus ``/deployments/{id}/events``, a Server-Sent Events stream of the re-rendered summary, timeline,
grid, chart and log while the deployment runs. Everything comes from the same deployment JSON the API serves."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from bot.pages.chart import ChartView, chart_view, traffic_chart
from bot.pages.event_log import LogLine, readable_log
from bot.pages.render import render, render_text
from bot.pages.stats import environment_numbers
from bot.pages.timeline import TimelineView, timeline_layout
from engine import FINAL_STATUSES, DeliveryNumbers, DeploymentService, NotFound

PAGES_DEPLOYER = web.AppKey("pages_deployer", DeploymentService)
LIST_LIMIT = 100
STREAM_WAIT_SECONDS = 15.0


async def list_page(request: web.Request) -> web.StreamResponse:
    deployer = request.app[PAGES_DEPLOYER]
    wanted = {k: request.query.get(k, "").strip() for k in ("application", "environment", "status")}
    applications = [a["name"] for a in deployer.applications()]
    rows: list[dict[str, Any]] = []
    for name in applications:
        if wanted["application"] and name != wanted["application"]:
            continue
        try:
            rows += await deployer.history(name, wanted["environment"] or None, limit=LIST_LIMIT)
        except NotFound:
            continue
    if wanted["status"]:
        rows = [r for r in rows if r["status"] == wanted["status"]]
    rows.sort(key=lambda r: r.get("created_at") or 0, reverse=True)
    return render(
        "list.html",
        deployments=rows[:LIST_LIMIT],
        filters=wanted,
        applications=applications,
        delivery=await _delivery(deployer, wanted["application"], wanted["environment"]),
    )


async def _delivery(deployer: DeploymentService, application: str, environment: str) -> list[DeliveryNumbers]:
    """Each (application, environment)'s numbers for 30 and 90 days, narrowed by the list's filters."""
    numbers: list[DeliveryNumbers] = []
    now = deployer.clock.now()
    for app in deployer.applications():
        if application and app["name"] != application:
            continue
        environments = [
            str(e["name"])
            for e in app["environments"]
            if not environment or e["name"].casefold() == environment.casefold()
        ]
        numbers += await environment_numbers(deployer, str(app["name"]), environments, now=now)
    return numbers


def _timeline(document: dict[str, Any], now: float) -> TimelineView | None:
    """The hosts x events timeline from the document's target event records (running bars reach ``now``, the
    engine's clock: the records' times come from it)."""
    return timeline_layout(document["targets"], now=now, ended_at=document.get("ended_at"))


def _log_lines(document: dict[str, Any], log: list[dict[str, Any]]) -> list[LogLine]:
    return readable_log(log, document["targets"])


def _chart(document: dict[str, Any], log: list[dict[str, Any]]) -> ChartView | None:
    """The traffic chart's geometry, or None for a deployment that moves no traffic."""
    chart = traffic_chart(document, log, now=time.time())
    return chart_view(chart) if chart is not None else None


async def detail_page(request: web.Request) -> web.StreamResponse:
    deployer = request.app[PAGES_DEPLOYER]
    deployment_id = request.match_info["id"]
    try:
        document = await deployer.get(deployment_id)
        log = await deployer.event_log(deployment_id)
    except NotFound:
        return render("missing.html", status=404, deployment_id=deployment_id)
    return render(
        "detail.html",
        d=document,
        log_lines=_log_lines(document, log),
        chart=_chart(document, log),
        timeline=_timeline(document, deployer.clock.now()),
        live=document["status"] not in FINAL_STATUSES,
        query_string=request.query_string,
    )


async def _update(deployer: DeploymentService, document: dict[str, Any]) -> str:
    """Everything on the page that changes while a deployment runs, re-rendered by the same templates."""
    log = await deployer.event_log(document["id"])
    chart = _chart(document, log)
    payload = {
        "status": document["status"],
        "version": document["version"],
        "traffic": document.get("traffic"),
        "summary": render_text("summary.html", d=document),
        "grid": render_text("grid.html", d=document),
        "chart": render_text("chart.html", chart=chart) if chart is not None else None,
        "timeline": render_text("timeline.html", timeline=_timeline(document, deployer.clock.now())),
        "log": render_text("log.html", log_lines=_log_lines(document, log)),
    }
    return f"event: deployment\ndata: {json.dumps(payload)}\n\n"


async def event_stream(request: web.Request) -> web.StreamResponse:
    """One SSE message per new version; ends when the deployment is final (a finished page never streams)."""
    deployer = request.app[PAGES_DEPLOYER]
    deployment_id = request.match_info["id"]
    try:
        document = await deployer.get(deployment_id)
    except NotFound:
        return render("missing.html", status=404, deployment_id=deployment_id)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    after = request.query.get("after", "")
    version = int(after) if after.isdigit() else 0
    try:
        while True:
            if document["version"] > version or document["status"] in FINAL_STATUSES:
                await response.write((await _update(deployer, document)).encode())
                version = document["version"]
            else:
                await response.write(b": keepalive\n\n")
            if document["status"] in FINAL_STATUSES:
                break
            document = await deployer.watch(deployment_id, after=version, timeout=STREAM_WAIT_SECONDS)
    except ConnectionResetError:  # the reader closed the tab: nothing left to do
        return response
    await response.write_eof()
    return response
