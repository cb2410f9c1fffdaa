"""The warm standby: a `meshd worker` started and imported ahead of need, which holds only the
inherited listening socket and waits for the supervisor to promote it.

Before promotion it never accepts on the socket, never opens the database and never takes
`writer.lock`: it blocks on its channel to the supervisor (one end of a socketpair). It says
ready once imported; the promotion is one line carrying the mode to serve in (the supervisor's
current one, which may have changed since the standby started). End of file on the channel
(the supervisor retired it, or died) ends it; so does the supervisor's SIGTERM, or
PR_SET_PDEATHSIG when the supervisor is killed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from meshd.process import STANDBY_READY, read_promotion


@dataclass(frozen=True, slots=True)
class Promotion:
    read_only_reason: str | None  # the mode to serve in: None is read-write


def wait_for_promotion(channel: socket.socket) -> Promotion | None:
    """Say ready, then block until promoted (the Promotion) or retired (None)."""
    channel.setblocking(True)
    try:
        channel.sendall(STANDBY_READY)
        data = b""
        while not data.endswith(b"\n"):
            chunk = channel.recv(4096)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    finally:
        channel.close()
    return Promotion(read_promotion(data))
