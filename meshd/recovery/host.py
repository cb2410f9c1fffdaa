"""What a protocol step may call: the supervisor side of recovery, as a typed `Protocol`.

Steps get a `RecoveryHost` and nothing else, so everything a step can do to the running system
is listed here; the supervisor implements it (`meshd.supervisor.actions`) and the engine's
unit tests implement it with a fake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from meshd.config import Settings
    from meshd.recovery.engine import Run
    from meshd.store.base import ReadStorage


class EngineHost(Protocol):
    """What the engine itself needs: somewhere to record and to announce."""

    def queue_record(self, record: dict[str, Any]) -> None:
        """Have `record` (an event, a run) written to the database, now or once a worker
        serves; idempotent by its id."""

    async def publish(self, event: dict[str, Any]) -> None:
        """Announce to agents on the WebSocket (when a worker serves) and to alert hooks."""


class RecoveryHost(EngineHost, Protocol):
    settings: Settings
    storage: ReadStorage  # read-only, works while the worker is down

    # -- the worker's lifecycle --------------------------------------------------------------
    async def wait_for_healthy_worker(self) -> str: ...
    def hold_worker(self, run_id: str) -> None:
        """Nothing (re)starts a worker until `release_worker(run_id)`."""
    def release_worker(self, run_id: str) -> None: ...
    async def stop_worker_for(self, run_id: str) -> str:
        """Hold and kill the worker (not drained: the WAL is evidence); 503 meanwhile."""
    async def start_worker_read_only(self, run_id: str, reason: str) -> str: ...
    async def enable_writes(self, run_id: str) -> str: ...

    # -- the database ------------------------------------------------------------------------
    async def quick_check(self) -> list[str]: ...
    async def database_check(self, full: bool) -> list[str]: ...
    async def restore_database(self, run: Run) -> Any: ...
    async def verify_database(self) -> str: ...
    async def self_test(self) -> str: ...

    # -- other protocols and records ---------------------------------------------------------
    def start_corruption_protocol(self, reason: str, **context: Any) -> Run: ...
    on_postgresql: bool
    def start_unreachable_protocol(self, reason: str) -> Run:
        """Database Unreachable (PostgreSQL only; joins a run under way)."""
    async def complete_update(self, update_id: str) -> None: ...
    def publish_rollback_update(self, update: dict[str, Any]) -> None:
        """Have the worker write and announce a non-breaking emergency update with
        `rollback_to` (idempotent by its id)."""
