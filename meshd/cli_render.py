"""Human output of the operator commands: aligned tables with headers, ages and sizes for
people. `--json` (and any non-terminal stdout) prints the data itself instead."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def pairs(rows: Sequence[tuple[str, Any]]) -> str:
    """A two-column FIELD / VALUE table."""
    return table(("FIELD", "VALUE"), rows)


def status(data: dict[str, Any]) -> str:
    head = f"meshd is {data['state']}" + (f": {data['reason']}" if data.get("reason") else "")
    last = data.get("last_backup")
    check = data.get("last_check")
    rows = [
        ("state", data["state"]),
        ("mode", data.get("mode")),
        ("reason", data.get("reason") or "-"),
        ("supervisor pid", data.get("supervisor_pid")),
        ("worker pid", data.get("worker_pid")),
        ("uptime", age(data.get("uptime_s"))),
        ("worker uptime", age(data.get("worker_uptime_s"))),
        ("restarts", data.get("restarts")),
        ("agents", data.get("agents")),
        ("open events", data.get("open_events")),
        ("pending records", data.get("pending_records")),
        ("last backup", f"{last['file']}, {age(last['age_s'])} ago, {size(last['size'])}, "
                        f"{'verified' if last['verified'] else 'NOT VERIFIED'}"
         if last else "none"),
        ("last check", f"{check['kind']} {'ok' if check['ok'] else 'FAILED'} at {check['at']}"
         + ("" if check["ok"] else f" ({'; '.join(check['problems'][:2])})")
         if check else "none yet"),
        ("listen", data.get("listen")),
        ("data dir", data.get("data_dir")),
        ("database", data.get("database")),
    ]
    node = data.get("node")
    if node and node.get("role") != "single":
        rows.append(("node", f"{node['node_id']} ({node['role']}"
                             + (", runs the mesh's duties" if node["leads"] else "")
                             + (f"; lock connection: {node['last_error']}"
                                if node.get("last_error") else "") + ")"))
    standby = data.get("standby")
    if standby:
        rows.append(("standby", f"pid {standby['pid']}, "
                                f"{'ready' if standby['ready'] else 'starting'}, "
                                f"{standby['rss_mb']} MB; {data.get('promotions', 0)} "
                                "promotion(s)"))
    text = head + "\n\n" + pairs(rows)
    runs = data.get("protocol_runs") or []
    if runs:
        text += "\n\nPROTOCOL RUNS\n" + table(("RUN", "PROTOCOL", "STATE"), [
            (r["id"], r["protocol"], r["state"]) for r in runs])
    nodes = data.get("nodes") or []
    this = (data.get("node") or {}).get("node_id")
    if nodes:
        text += "\n\n" + nodes_table(nodes, this)
    mesh_runs = data.get("mesh_runs") or []
    if mesh_runs:
        text += "\n\nMESH-WIDE RUNS\n" + table(("RUN", "PROTOCOL", "STATE", "DRIVEN BY"), [
            (r["id"], r["protocol"], r["state"] or "unknown",
             r["driver"] + (" (this node)" if r["driver"] == this else "")
             + (f", adopted from {r['adopted_from']}" if r.get("adopted_from") else ""))
            for r in mesh_runs])
    replicas = data.get("replicas") or []
    if replicas:
        text += "\n\n" + table(("REPLICA", "STATE", "SHIPPED SEQ", "EPOCH"), [
            (r["replica"], "ok" if r["ok"] else f"FAILING ({r['last_error']})",
             r["shipped_seq"], r["shipped_epoch"]) for r in replicas])
    return text


def nodes_table(nodes: Sequence[dict[str, Any]], this: str | None) -> str:
    """The mesh's nodes (PostgreSQL): which one leads, which are gone, this one marked *."""
    return "NODES\n" + table(("NODE", "STATE", "ADDRESS", "PID", "VERSION", "STARTED", "SEEN"), [
        (("* " if n["node_id"] == this else "  ") + n["node_id"], n["state"].upper()
         if n["leader"] else n["state"], n["address"], n["pid"], n["version"],
         n["started_at"], f"{age(n['seen_s_ago'])} ago") for n in nodes])


def backups(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "no backups"
    return table(("FILE", "AGE", "SIZE", "SEQ", "EPOCH", "VERIFIED", "REASON"), [
        (r["file"], age(r["age_s"]), size(r["size"]), r["journal_seq"],
         r.get("journal_epoch"), "yes" if r["verified"] else "NO", r.get("reason"))
        for r in rows])
