"""replica_sync from the writer's side: after a batch's journal fsync and before its COMMIT,
the writer thread asks the supervisor (over the control socket) to ship the batch to the
replicas and waits for the first one to confirm. A blocking call on purpose: the writer must
not commit until it knows; requests arriving meanwhile join the next batch."""

from __future__ import annotations

import http.client
import socket

import orjson

from meshd import log as logging
from meshd.config import Settings

log = logging.get("meshd.replica_sync")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("meshd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ReplicaSync:
    def __init__(self, settings: Settings) -> None:
        self.path = str(settings.control_socket)
        self.timeout = settings.replica_sync_timeout

    def __call__(self, epoch: int, seq: int) -> bool:
        conn = _UnixConnection(self.path, self.timeout + 2.0)
        body = orjson.dumps({"epoch": epoch, "seq": seq, "timeout": self.timeout})
        try:
            conn.request("POST", "/control/replica-sync", body,
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = orjson.loads(resp.read())
            return resp.status == 200 and bool(data.get("ok"))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log.warning("replica_sync.unanswered", error=str(exc), seq=seq)
            return False
        finally:
            conn.close()
