"""The HTML pages: ``/deployments`` (filterable list) and ``/deployments/{id}`` (header, hosts-by-events grid,
traffic, event log), plus ``/deployments/{id}/events``, a Server-Sent Events stream of the re-rendered grid while
the deployment runs. Everything comes from the same deployment JSON the API serves."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bot.api import DeploymentService
from bot.pages.render import FINAL_STATUSES, render, render_text
from engine.errors import NotFound

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
    return render("list.html", deployments=rows[:LIST_LIMIT], filters=wanted, applications=applications)


def traffic_points(document: dict[str, Any], log: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """(time, percent) from event-log entries that carry a percent, ending at the current weight."""
    if document.get("traffic") is None:
        return []
    points = [
        (float(e["at"]), int(e["data"]["percent"]))
        for e in log
        if e["kind"].startswith("traffic") and isinstance(e.get("data"), dict) and "percent" in e["data"]
    ]
    start = document.get("started_at") or document.get("created_at")
    if start is not None:
        points.insert(0, (float(start), 0))
    points.append((float(document.get("ended_at") or (points[-1][0] if points else 0)), document["traffic"]["percent"]))
    return points


def traffic_svg_path(points: list[tuple[float, int]], width: int = 300, height: int = 60) -> str:
    """A step line of weight over time, scaled into the SVG box (pure arithmetic, so it is tested directly)."""
    if len(points) < 2:
        return ""
    t0, t1 = points[0][0], points[-1][0]
    span = (t1 - t0) or 1.0
    parts: list[str] = []
    last_y = None
    for at, percent in points:
        x = round((at - t0) / span * width, 1)
        y = round(height - percent / 100 * height, 1)
        if last_y is None:
            parts.append(f"M{x},{y}")
        else:
            parts.append(f"L{x},{last_y} L{x},{y}")
        last_y = y
    return " ".join(parts)


async def detail_page(request: web.Request) -> web.StreamResponse:
    deployer = request.app[PAGES_DEPLOYER]
    deployment_id = request.match_info["id"]
    try:
        document = await deployer.get(deployment_id)
        log = await deployer.event_log(deployment_id)
    except NotFound:
        return render("missing.html", status=404, deployment_id=deployment_id)
    points = traffic_points(document, log)
    return render(
        "detail.html",
        d=document,
        log=log,
        traffic_path=traffic_svg_path(points),
        live=document["status"] not in FINAL_STATUSES,
        query_string=request.query_string,
    )


def _update(document: dict[str, Any]) -> str:
    payload = {
        "status": document["status"],
        "version": document["version"],
        "traffic": document.get("traffic"),
        "grid": render_text("grid.html", d=document),
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
                await response.write(_update(document).encode())
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
