"""The supervisor's control socket (`data/meshd.sock`, mode 0600): how operator commands and
the worker reach the running daemon. Each route is a thin call into the supervisor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from meshd import log as logging
from meshd.recovery import corruption
from meshd.recovery.protocols import PROTOCOLS, catalog, dry_run
from meshd.store import backups
from meshd.store import restore as restore_mod
from meshd.supervisor.maintenance import backup_listing

if TYPE_CHECKING:
    from meshd.supervisor.loop import Supervisor

log = logging.get("meshd.control")


# Database Corruption restores meshd's SQLite file; a PostgreSQL mesh is restored offline.
ON_POSTGRESQL = ("meshd runs on PostgreSQL: there is no file to restore. Stop meshd and run "
                 "`meshd restore --database postgresql://...` (docs/postgresql.md)")


def make_control_app(sup: Supervisor) -> web.Application:
    async def status(request: web.Request) -> web.Response:
        return web.json_response(sup.status())

    async def corruption_reported(request: web.Request) -> web.Response:
        detail = (await request.json()).get("detail", "")
        log.error("supervisor.corruption_reported", detail=detail)
        run = sup.start_corruption_protocol(f"the worker met corruption: {detail}")
        return web.json_response({"accepted": True, "run_id": run.id})

    async def database_unreachable(request: web.Request) -> web.Response:
        detail = (await request.json()).get("detail", "")
        run = sup.start_unreachable_protocol(f"the worker cannot reach the database: {detail}")
        return web.json_response({"accepted": True, "run_id": run.id})

    async def backup(request: web.Request) -> web.Response:
        try:
            return web.json_response(await sup.maintenance.backup_now("operator"))
        except backups.BackupError as exc:
            return web.json_response({"error": str(exc)}, status=500)

    async def list_backups(request: web.Request) -> web.Response:
        return web.json_response(backup_listing(sup.settings.backup_dir))

    async def check(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        problems = await sup.maintenance.check_now(bool(body.get("full")))
        return web.json_response({"ok": not problems, "problems": problems,
                                  "check": sup.maintenance.last_check})

    async def restore(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        if sup.on_postgresql:
            return web.json_response({"error": ON_POSTGRESQL}, status=409)
        if sup.engine.active(corruption.SPEC.name):
            return web.json_response({"error": "a restore is already under way"}, status=409)
        try:
            restore_mod.choose_backup(sup.settings.backup_dir, body.get("backup"))
        except restore_mod.RestoreError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        context = {k: body[k] for k in ("backup", "to_time") if body.get(k)}
        run = sup.start_corruption_protocol(
            "operator requested a restore" + (f" of {body['backup']}" if body.get("backup")
                                              else "") +
            (f" to {body['to_time']}" if body.get("to_time") else ""),
            title="Database restore (operator)", **context)
        if body.get("wait", True):
            run = await sup.engine.wait(run.id)
        return web.json_response(run.public(), status=200 if run.outcome != "failed" else 500)

    async def mode(request: web.Request) -> web.Response:
        body = await request.json()
        mode = body.get("mode")
        if mode not in ("read-only", "read-write"):
            return web.json_response({"error": "mode must be read-only or read-write"},
                                     status=400)
        await sup.set_mode("set by the operator" if mode == "read-only" else None)
        return web.json_response({"mode": mode})

    async def protocols(request: web.Request) -> web.Response:
        return web.json_response({"protocols": catalog(tuple(PROTOCOLS))})

    async def protocol_run(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in PROTOCOLS:
            return web.json_response(
                {"error": f"no protocol {name}; one of {', '.join(PROTOCOLS)}"}, status=404)
        body = await request.json() if request.can_read_body else {}
        if body.get("dry_run"):
            return web.json_response({"protocol": name, "dry_run": True,
                                      "steps": dry_run(name)})
        reason = str(body.get("reason") or "started by an operator")
        context = body.get("context") or {}
        if name == "breaking_api_update" and not context.get("update_id"):
            return web.json_response({"error": "breaking_api_update needs context.update_id"},
                                     status=400)
        if name == corruption.SPEC.name and sup.on_postgresql:
            return web.json_response({"error": ON_POSTGRESQL}, status=409)
        if name == corruption.SPEC.name:
            run = sup.start_corruption_protocol(reason, **context)
        else:
            run = sup.engine.start(name, reason, context)
        sup.wake()
        return web.json_response(run.public())

    async def runs(request: web.Request) -> web.Response:
        runs = sorted(sup.engine.runs.values(), key=lambda r: r.started_at, reverse=True)
        return web.json_response([r.public() for r in runs])

    async def abort(request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        if run_id not in sup.engine.runs:
            return web.json_response({"error": "no such run"}, status=404)
        body = await request.json() if request.can_read_body else {}
        run = await sup.engine.abort(run_id, str(body.get("reason") or "operator"))
        sup.release_worker(run_id)
        return web.json_response(run.public())

    async def run(request: web.Request) -> web.Response:
        run = sup.engine.runs.get(request.match_info["run_id"])
        if run is None:
            return web.json_response({"error": "no such run"}, status=404)
        return web.json_response(run.public())

    async def storage(request: web.Request) -> web.Response:
        body = await request.json()
        sup.disk_state(body.get("state") == "full", body.get("detail"))
        return web.json_response({"accepted": True})

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_post("/control/corruption", corruption_reported)
    app.router.add_post("/control/storage", storage)
    app.router.add_post("/control/database-unreachable", database_unreachable)
    app.router.add_post("/control/backup", backup)
    app.router.add_get("/control/backups", list_backups)
    app.router.add_post("/control/check", check)
    app.router.add_post("/control/restore", restore)
    app.router.add_post("/control/mode", mode)
    app.router.add_get("/control/protocols", protocols)
    app.router.add_post("/control/protocols/{name}/run", protocol_run)
    app.router.add_get("/control/runs", runs)
    app.router.add_get("/control/runs/{run_id}", run)
    app.router.add_post("/control/runs/{run_id}/abort", abort)
    return app
