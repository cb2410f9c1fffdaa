"""Progress bars for long operator work (backup, restore, journal replay, migration), drawn on
stderr only when it is a terminal and the command turned them on: a daemon's log stream and
any piped output never see them.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_enabled = False
REDRAW_S = 0.1


def enable(on: bool = True) -> None:
    """Operator commands call this; bars then draw when stderr is a terminal."""
    global _enabled
    _enabled = on


class Bar:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.active = _enabled and _isatty(self.stream)
        self._drawn_at = 0.0
        self._last = (0, 0)

    def update(self, done: int, total: int) -> None:
        self._last = (done, total)
        if not self.active:
            return
        now = time.monotonic()
        if now - self._drawn_at < REDRAW_S and done < total:
            return
        self._drawn_at = now
        share = done / total if total else 1.0
        filled = int(share * 30)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{share:4.0%} {done}/{total}")
        self.stream.flush()

    def close(self) -> None:
        if self.active and self._last != (0, 0):
            done, total = self._last
            self.update(total or done, total or done)
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
