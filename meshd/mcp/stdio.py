"""`meshd mcp`: the MCP server over stdio, for an agent host on the agent's own machine.

A client of a running meshd (MESHD_URL, and MESHD_AGENT_TOKEN or MESHD_API_KEY from the
environment); it never opens the database. stdout carries the protocol, so logs go to stderr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from meshd.config import DEFAULT_API_KEY

DEFAULT_URL = "http://127.0.0.1:4000"


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    credential: str


def target_from(environ: Mapping[str, str]) -> Target:
    """The meshd to call and the credential: an agent token wins over the shared key, which
    defaults as the daemon's does (AGENT_MESH_API_KEY is read too, as the Node clients do)."""
    url = environ.get("MESHD_URL") or environ.get("AGENT_MESH_URL") or DEFAULT_URL
    credential = (environ.get("MESHD_AGENT_TOKEN") or environ.get("MESHD_API_KEY")
                  or environ.get("AGENT_MESH_API_KEY") or DEFAULT_API_KEY)
    return Target(url.rstrip("/"), credential)


def run(environ: Mapping[str, str] | None = None) -> int:
    # Imported here: `meshd run` and the other commands never load the SDK.
    from meshd.mcp.backend import MeshApi
    from meshd.mcp.server import build_server
    from meshd.mcp.session import MeshSession

    target = target_from(os.environ if environ is None else environ)
    server = build_server(lambda: MeshSession(api=MeshApi(target.url, target.credential),
                                              local_files=True))
    server.run("stdio")
    return 0
