"""`comfymesh status` without a job id: the running cluster from `GET /v1/cluster` (the API the /ui/cluster page
reads), drawn with rich: live on a terminal until Ctrl+C, or one frame (`--once`, or output that is not a
terminal)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from comfymesh.cli.gateway import GatewayError, call


def _bytes(n: int) -> str:
    if not n:
        return "-"
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def _mesh_line(base_url: str, view: dict[str, Any]) -> Text:
    """Whether every stage has a healthy replica, in the words /readyz uses."""
    stages: dict[str, bool] = {}
    for orchestrator in view["orchestrators"]:
        for replica in orchestrator["replicas"]:
            stages[replica["stage"]] = stages.get(replica["stage"], False) or replica["healthy"]
    missing = [stage for stage, healthy in stages.items() if not healthy]
    down = [o["address"] for o in view["orchestrators"] if not o["healthy"]]
    state = ("orchestrator ready, every stage healthy" if not missing
             else f"orchestrator ready; no healthy replica of the {', '.join(missing)} stage")
    if down:
        state += f"; orchestrator down at {', '.join(down)}"
    line = Text(f"comfymesh at {base_url}: ")
    line.append(state, style="red" if missing or down else "green")
    line.append(f"   queued: {view['queued']}, running: {len(view['running'])}")
    return line


def _running(view: dict[str, Any]) -> Table:
    table = Table(title="running jobs", title_justify="left", expand=False)
    for column in ("job", "node", "progress", "nodes", "orchestrator"):
        table.add_column(column)
    for job in view["running"]:
        node = f"{job['node_id']} {job['class_type']}" if job["node_id"] else "-"
        progress = f"{job['value']}/{job['max']} ({100 * job['value'] // job['max']}%)" if job["max"] else "-"
        nodes = f"{job['nodes_done']}/{job['nodes_total']}" if job["nodes_total"] else "-"
        table.add_row(job["job_id"], node, progress, nodes, job["orchestrator"] or "another")
    return table


def _replicas(view: dict[str, Any]) -> Table:
    table = Table(title="orchestrators and stage replicas", title_justify="left")
    for column in ("orchestrator", "stage", "replica", "health", "slots in use", "device", "loaded models",
                   "model cache", "device memory"):
        table.add_column(column)
    for orchestrator in view["orchestrators"]:
        if not orchestrator["healthy"]:
            table.add_row(orchestrator["address"], "-", "-", Text("orchestrator down", style="bold red"),
                          *["-"] * 5)
        for replica in orchestrator["replicas"]:
            health = Text("healthy", style="green") if replica["healthy"] else Text("down", style="bold red")
            cache = (f"{_bytes(replica['memory_used_bytes'])} of {_bytes(replica['memory_budget_bytes'])}"
                     if replica["memory_budget_bytes"] else "-")
            memory = (f"{_bytes(replica['device_free_bytes'])} free of {_bytes(replica['device_total_bytes'])}"
                      if replica["device_total_bytes"] else "-")
            table.add_row(orchestrator["name"], replica["stage"], replica["address"], health,
                          f"{replica['in_flight']}/{replica['slots']}", replica["device"] or "-",
                          ", ".join(replica["models"]) or "-", cache, memory)
    return table


def _failures(view: dict[str, Any]) -> Table:
    table = Table(title="recent failures", title_justify="left")
    for column in ("job", "node", "error", "when"):
        table.add_column(column)
    for failure in view["failures"]:
        node = f"{failure['node_id']} {failure['node_type']}" if failure["node_id"] else "-"
        when = time.strftime("%H:%M:%S", time.localtime(failure["finished"])) if failure["finished"] else "-"
        table.add_row(failure["job_id"], node, Text(f"{failure['type']}: {failure['message']}", style="red"), when)
    return table


def frame(base_url: str, view: dict[str, Any]) -> RenderableType:
    """One frame of the view: the mesh's state, then running jobs, replicas and recent failures."""
    return Group(_mesh_line(base_url, view), _running(view), _replicas(view), _failures(view))


def _fetch(http: httpx.Client) -> RenderableType:
    """A frame from the gateway now; a refusal or an unreachable gateway becomes the frame (the live view waits
    for it to come back)."""
    try:
        return frame(str(http.base_url).rstrip("/"), call(http, "GET", "/v1/cluster").json())
    except GatewayError as exc:
        return Text("\n".join(exc.lines), style="red")


def show(http: httpx.Client, out: Console, once: bool, interval: float) -> None:
    """Print one frame (`once`, or a console that is not a terminal), else redraw every `interval` seconds
    until Ctrl+C."""
    if once or not out.is_terminal:
        out.print(frame(str(http.base_url).rstrip("/"), call(http, "GET", "/v1/cluster").json()))
        return
    from rich.live import Live

    try:
        with Live(_fetch(http), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)  # the refresh period: a poll of the gateway, not a wait for readiness
                live.update(_fetch(http), refresh=True)
    except KeyboardInterrupt:
        return
