"""Whether this worker runs the once-per-mesh jobs (the sweep, offline and partition
detection): the lease its supervisor grants it (`meshd/supervisor/leader.py`).

The worker never takes a lock of its own: its supervisor holds the leader lock and tells it,
every second and at once on a change, whether it leads and until when, as a CLOCK_MONOTONIC
deadline (the same clock in every process of the host). A worker not told again stops leading
when the deadline passes, so a supervisor that died or froze cannot leave its worker acting
for the mesh. On SQLite (one node) and unsupervised the worker always leads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from meshd import log as logging

log = logging.get("meshd.leadership")


@dataclass
class Lease:
    always: bool  # SQLite, or no supervisor: the only node
    until: float = 0.0  # time.monotonic() deadline of the lease
    gained_at: float | None = None  # when this worker last started leading (monotonic)

    def leads(self) -> bool:
        return self.always or time.monotonic() < self.until

    def grant(self, until: float) -> None:
        was = self.leads()
        self.until = until
        if not was and self.leads():
            self.gained_at = time.monotonic()
            log.info("worker.leading", lease_s=round(until - self.gained_at, 3))

    def revoke(self) -> None:
        was = self.leads()
        self.until = 0.0
        if was and not self.always:
            log.info("worker.not_leading")
