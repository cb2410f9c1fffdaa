"""The supervisor's routes on its control socket (`data/meshd.sock`, mode 0600): how operator
commands and the worker reach the running daemon. Each route is a thin call into the
supervisor; framing and errors are `meshd.control.server`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from meshd import log as logging
from meshd import semver
from meshd.control.server import BadRequest, make_app, read_json, reply
from meshd.errors import Conflict, MeshError, NotFound, Unavailable
from meshd.recovery import corruption
from meshd.recovery.protocols import MESH_WIDE, PROTOCOLS, catalog, dry_run
from meshd.store import backups
from meshd.store import restore as restore_mod
from meshd.supervisor import metrics as supervisor_metrics
from meshd.supervisor.maintenance import backup_listing

if TYPE_CHECKING:
    from meshd.supervisor.loop import Supervisor

log = logging.get("meshd.control")
DRILLS = ("server_crash_recovery", "network_partition")

# Database Corruption restores meshd's SQLite file; a PostgreSQL mesh is restored offline.
ON_POSTGRESQL = ("meshd runs on PostgreSQL: there is no file to restore. Stop meshd and run "
                 "`meshd restore --database postgresql://...` (docs/postgresql.md)")


def make_control_app(sup: Supervisor) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        return reply(await sup.fresh_status())

    @routes.post("/control/corruption")
    async def corruption_reported(request: web.Request) -> web.Response:
        body = await read_json(request)
        detail = body.get("detail", "")
        worker = sup.worker
        if isinstance(body.get("pid"), int) and (worker is None or worker.pid != body["pid"]):
            # A report from a worker already replaced (killed by the restore it asked for, its
            # report late): the database it saw is gone; a second restore would be spurious.
            log.warning("supervisor.stale_corruption_report", pid=body["pid"], detail=detail)
            return reply({"accepted": False, "reason": "from a worker no longer serving"})
        log.error("supervisor.corruption_reported", detail=detail)
        run = sup.start_corruption_protocol(f"the worker met corruption: {detail}")
        return reply({"accepted": True, "run_id": run.id})

    @routes.post("/control/database-unreachable")
    async def database_unreachable(request: web.Request) -> web.Response:
        detail = (await read_json(request)).get("detail", "")
        run = sup.start_unreachable_protocol(f"the worker cannot reach the database: {detail}")
        return reply({"accepted": True, "run_id": run.id})

    @routes.post("/control/storage")
    async def storage(request: web.Request) -> web.Response:
        body = await read_json(request)
        sup.disk_state(body.get("state") == "full", body.get("detail"))
        return reply({"accepted": True})

    @routes.get("/control/metrics")
    async def metrics(request: web.Request) -> web.Response:
        return supervisor_metrics.metrics_response(sup)

    @routes.post("/control/replica-sync")
    async def replica_sync(request: web.Request) -> web.Response:
        body = await read_json(request)
        try:
            epoch, seq, timeout = int(body["epoch"]), int(body["seq"]), float(body["timeout"])
        except (KeyError, TypeError, ValueError):
            raise BadRequest("epoch, seq and timeout are required numbers") from None
        held_by = await sup.replication.sync(epoch, seq, timeout)
        return reply({"ok": held_by is not None, "replica": held_by})

    @routes.post("/control/backup")
    async def backup(request: web.Request) -> web.Response:
        try:
            return reply(await sup.maintenance.backup_now("operator"))
        except backups.BackupError as exc:
            raise MeshError(str(exc)) from None

    @routes.get("/control/backups")
    async def list_backups(request: web.Request) -> web.Response:
        return reply(backup_listing(sup.settings.backup_dir))

    @routes.post("/control/check")
    async def check(request: web.Request) -> web.Response:
        body = await read_json(request)
        problems = await sup.maintenance.check_now(bool(body.get("full")))
        return reply({"ok": not problems, "problems": problems,
                      "check": sup.maintenance.last_check})

    @routes.post("/control/restore")
    async def restore(request: web.Request) -> web.Response:
        body = await read_json(request)
        if sup.on_postgresql:
            raise Conflict(ON_POSTGRESQL)
        if sup.engine.active(corruption.SPEC.name):
            raise Conflict("a restore is already under way")
        try:
            restore_mod.choose_backup(sup.settings.backup_dir, body.get("backup"))
        except restore_mod.RestoreError as exc:
            raise Conflict(str(exc)) from None
        context = {k: body[k] for k in ("backup", "to_time") if body.get(k)}
        run = sup.start_corruption_protocol(
            "operator requested a restore" + (f" of {body['backup']}" if body.get("backup")
                                              else "") +
            (f" to {body['to_time']}" if body.get("to_time") else ""),
            title="Database restore (operator)", **context)
        if body.get("wait", True):
            run = await sup.engine.wait(run.id)
        return reply(run.public(), status=200 if run.outcome != "failed" else 500)

    @routes.post("/control/mode")
    async def mode(request: web.Request) -> web.Response:
        mode = (await read_json(request)).get("mode")
        if mode not in ("read-only", "read-write"):
            raise BadRequest("mode must be read-only or read-write")
        await sup.set_mode("set by the operator" if mode == "read-only" else None)
        return reply({"mode": mode})

    @routes.get("/control/protocols")
    async def protocols(request: web.Request) -> web.Response:
        return reply({"protocols": catalog(tuple(PROTOCOLS))})

    @routes.post("/control/protocols/{name}/run")
    async def protocol_run(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in PROTOCOLS:
            raise NotFound(f"no protocol {name}; one of {', '.join(PROTOCOLS)}")
        body = await read_json(request)
        if body.get("dry_run"):
            return reply({"protocol": name, "dry_run": True, "steps": dry_run(name)})
        reason = str(body.get("reason") or "started by an operator")
        context = body.get("context") or {}
        if not isinstance(context, dict):
            raise BadRequest("context must be an object")
        if name == "breaking_api_update" and not context.get("update_id"):
            raise BadRequest("breaking_api_update needs context.update_id")
        if context.get("rollback_to") is not None and (
                name != "server_crash_recovery"
                or not semver.is_valid(str(context["rollback_to"]))):
            raise BadRequest("rollback_to is a semantic version, for server_crash_recovery")
        if name == corruption.SPEC.name and sup.on_postgresql:
            raise Conflict(ON_POSTGRESQL)
        if name in MESH_WIDE and not sup.leads:
            if body.get("detected") and sup.on_postgresql:
                # A fault this node's worker met (a breaking update created here): handed to
                # the leader through the database, which runs it (docs/nodes.md).
                try:
                    handed = await sup.leadership.hand_over(name, reason, context)
                except Exception as exc:  # noqa: BLE001 - psycopg's, OS and timeout errors
                    raise Unavailable(f"cannot hand {name} over to the leader: {exc}") from None
                return reply({"handed_over": handed, "protocol": name,
                              "leader": sup.leadership.leader_node()}, status=202)
            # An operator's start is refused, naming the leader: a follower neither runs a
            # mesh-wide protocol (the leader might run the same one) nor forwards it.
            raise Conflict(sup.leadership.not_leader(name),
                           extra={"leader": sup.leadership.leader_node()})
        if name == corruption.SPEC.name:
            run = sup.start_corruption_protocol(reason, **context)
        else:
            # Started by hand with no detected fault behind it: a drill, and it says so.
            # (A breaking update's run watches a real update; a restore really restores.)
            drill = (name in DRILLS and not body.get("detected")
                     and not context.get("rollback_to"))  # a roll-back by hand is real
            run = sup.engine.start(name, reason, context, drill=drill)
        sup.wake()
        return reply(run.public())

    @routes.get("/control/runs")
    async def runs(request: web.Request) -> web.Response:
        runs = sorted(sup.engine.runs.values(), key=lambda r: r.started_at, reverse=True)
        return reply([r.public() for r in runs])

    @routes.get("/control/runs/{run_id}")
    async def run(request: web.Request) -> web.Response:
        run = sup.engine.runs.get(request.match_info["run_id"])
        if run is None:
            raise NotFound("no such run")
        return reply(run.public())

    @routes.post("/control/runs/{run_id}/abort")
    async def abort(request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        if run_id not in sup.engine.runs:
            raise NotFound("no such run")
        body = await read_json(request)
        run = await sup.engine.abort(run_id, str(body.get("reason") or "operator"))
        sup.release_worker(run_id)
        return reply(run.public())

    return make_app(routes)
