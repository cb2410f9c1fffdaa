"""The warm standby: a `meshd worker` started and imported ahead of need, which holds only the
inherited listening socket and waits for the supervisor to promote it.

Before promotion it never accepts on the socket, never opens the database and never takes
`writer.lock`: it waits on its channel to the supervisor (one end of a socketpair). It says
ready once imported; the promotion is one line carrying the mode to serve in (the supervisor's
current one, which may have changed since the standby started). End of file on the channel
(the supervisor retired it, or died) ends it; so does the supervisor's SIGTERM, or
PR_SET_PDEATHSIG when the supervisor is killed.

While it waits it reads ahead in the journal's newest segment (read-only, no lock: appends
never rewrite a good frame), so that opening the store after promotion checks only what was
appended since instead of a segment of up to 64 MiB.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path

from meshd import log as logging
from meshd.process import STANDBY_READY, read_promotion
from meshd.store import journal as jr

log = logging.get("meshd.worker")

SCAN_EVERY = 1.0  # seconds between read-ahead scans of the journal while waiting


@dataclass(frozen=True, slots=True)
class Promotion:
    read_only_reason: str | None  # the mode to serve in: None is read-write
    journal_scan: jr.Scan | None  # the latest read-ahead, for the store to resume after


def read_ahead(journal_dir: Path, since: jr.Scan | None) -> jr.Scan | None:
    """The newest segment scanned from where `since` ended (None when there is none yet)."""
    try:
        newest = jr.newest_segment(journal_dir)
        return jr.scan_from(newest, since) if newest is not None else None
    except OSError:
        return None  # a segment rotated away under us: the next scan starts over


def wait_for_promotion(channel: socket.socket, journal_dir: Path) -> Promotion | None:
    """Say ready, then wait until promoted (the Promotion) or retired (None), reading ahead
    in the journal every SCAN_EVERY seconds meanwhile."""
    scan = read_ahead(journal_dir, None)
    channel.settimeout(SCAN_EVERY)
    data = b""
    try:
        # Promoted before it was ready, it finds the supervisor's end closed: the promotion
        # line still waits in the channel.
        with contextlib.suppress(OSError):
            channel.sendall(STANDBY_READY)
        while not data.endswith(b"\n"):
            try:
                chunk = channel.recv(4096)
            except TimeoutError:
                scan = read_ahead(journal_dir, scan)
                continue
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    finally:
        channel.close()
    return Promotion(read_promotion(data), scan)
