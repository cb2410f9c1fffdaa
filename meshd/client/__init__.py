"""meshd.client: a Python agent SDK for the Agent Mesh API that keeps working offline.

    async with MeshClient(url, key, "worker-1", state_dir=Path("state"),
                          spool_dir=Path("/run/mesh-spool"), on_message=handle) as client:
        await client.send(other_id, "hello")
"""

from meshd.client.agent import MeshClient
from meshd.client.backoff import Backoff
from meshd.client.errors import MeshError, Rejected, Unavailable
from meshd.client.records import FileInfo, Message, Via

__all__ = ["Backoff", "FileInfo", "MeshClient", "MeshError", "Message", "Rejected",
           "Unavailable", "Via"]
