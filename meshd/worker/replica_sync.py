"""replica_sync from the writer's side: after a batch's journal fsync and before its COMMIT,
the writer thread asks the supervisor (over the control socket) to ship the batch to the
replicas and waits for the first one to confirm. A blocking call on purpose: the writer must
not commit until it knows; requests arriving meanwhile join the next batch."""

from __future__ import annotations

from meshd import log as logging
from meshd.config import Settings
from meshd.control import client as control

log = logging.get("meshd.replica_sync")


class ReplicaSync:
    def __init__(self, settings: Settings) -> None:
        self.path = settings.control_socket
        self.timeout = settings.replica_sync_timeout

    def __call__(self, epoch: int, seq: int) -> bool:
        try:
            data = control.request_sync(
                self.path, "POST", "/control/replica-sync",
                {"epoch": epoch, "seq": seq, "timeout": self.timeout}, self.timeout + 2.0)
        except (control.Unreachable, control.ControlError) as exc:
            log.warning("replica_sync.unanswered", error=str(exc), seq=seq)
            return False
        return bool(data.get("ok"))
