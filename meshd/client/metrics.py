"""The agent process's own health numbers for heartbeats, read with psutil."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class Sample:
    cpu_percent: float
    memory_percent: float
    uptime_seconds: int

    def body(self, status: str = "healthy") -> dict:
        """The POST /api/agents/{id}/heartbeat body."""
        return {"status": status, "cpuUsage": round(self.cpu_percent, 2),
                "memoryUsage": round(self.memory_percent, 2),
                "uptimeSeconds": self.uptime_seconds}


class ProcessMetrics:
    """CPU since the previous sample, memory share, uptime of this process."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        # psutil measures CPU between two calls: the first one only starts the clock.
        self._process.cpu_percent(None)

    def sample(self) -> Sample:
        with self._process.oneshot():
            return Sample(
                cpu_percent=self._process.cpu_percent(None),
                memory_percent=self._process.memory_percent(),
                uptime_seconds=int(time.time() - self._process.create_time()),
            )
