"""What `meshd status` and systemd's STATUS= line say about a supervisor: its own state, its
worker's last reported figures, the outbox, protocol runs and the last backup and check."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from meshd.store import postgres
from meshd.supervisor.maintenance import last_backup

if TYPE_CHECKING:
    from meshd.supervisor.child import WorkerHandle
    from meshd.supervisor.loop import Supervisor


def line(sup: Supervisor) -> str:
    if sup.state != "serving":
        return f"{sup.state}: {sup.reason or ''}".strip()
    ws = sup.worker_status
    text = f"serving {ws.get('mode', 'read-write')}, {ws.get('agents', '?')} agents"
    if sup.leadership is not None and sup.leadership.url is not None:
        text += f", {sup.leadership.role}"
    last = last_backup(sup.settings.backup_dir)
    if last:
        text += f", last backup {last['age_s'] // 60:.0f} min ago"
    return text


def reason(sup: Supervisor, ws: dict[str, Any]) -> str | None:
    """Why meshd is not fully serving: the supervisor's own reason (restarting, crash loop,
    restoring), else the read-only reason, else the protocol run holding the worker."""
    if sup.reason:
        return sup.reason
    if ws.get("mode") == "read-only":
        return ws.get("reason") or sup.read_only_reason or "read-only"
    if str(sup.state) != "serving":
        return sup.read_only_reason or (f"held by protocol run {sup.held_by}" if sup.held_by
                                        else str(sup.state))
    return None


def snapshot(sup: Supervisor) -> dict[str, Any]:
    worker = sup.worker
    now = time.monotonic()
    ws = sup.worker_status if worker and worker.healthy_at else {}
    open_events = ws.get("open_events")
    pending_open = sup.outbox.open_events()
    settings = sup.settings
    return {
        "supervisor_pid": os.getpid(),
        "worker_pid": worker.pid if worker else None,
        "uptime_s": round(now - sup.started_at, 3),
        "worker_uptime_s": round(now - worker.started_at, 3) if worker else None,
        "restarts": sup.restarts.restarts,
        "promotions": sup.promotions,
        "standby": standby_status(sup.standby),
        "state": str(sup.state),
        "reason": reason(sup, ws),
        "status_age_s": round(now - sup._status_at, 3) if ws else None,
        "mode": ws.get("mode") or ("unavailable" if sup.state != "serving"
                                   else "read-write"),
        "last_backup": last_backup(settings.backup_dir),
        "last_check": sup.maintenance.last_check,
        "replicas": sup.replication.status(),
        "protocol_runs": [r.public() | {"steps": len(r.steps)} for r in
                          sup.engine.runs.values() if r.outcome == "running"],
        "open_events": (open_events or 0) + pending_open if open_events is not None
        else pending_open,
        "pending_records": len(sup.outbox),
        "agents": ws.get("agents"),
        "listen": f"{settings.host}:{sup.port}",
        "data_dir": str(settings.data_dir.resolve()),
        "database": (postgres.redact(settings.database) if postgres.is_url(settings.database)
                     else str(settings.database.resolve())),
        **leadership(sup),
    }


def leadership(sup: Supervisor) -> dict[str, Any]:
    """This node's role and, on PostgreSQL, every node of the mesh with the one leading (read
    from the lock's holder each tick, so a dead leader is never shown leading) and the
    mesh-wide runs under way with the node driving each."""
    if sup.leadership is None:
        return {"node": None, "nodes": [], "mesh_runs": []}
    return {"node": sup.leadership.status(), "nodes": sup.leadership.nodes,
            "mesh_runs": sup.leadership.mesh_runs}


def standby_status(standby: WorkerHandle | None) -> dict[str, Any] | None:
    """The warm standby: its pid, whether it is imported and waiting, its resident memory."""
    if standby is None or standby.exited:
        return None
    rss = standby.rss_bytes()
    return {"pid": standby.pid, "ready": standby.ready_at is not None,
            "rss_mb": round(rss / 2**20, 1) if rss else None}
