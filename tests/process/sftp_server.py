"""A real SFTP server for the replica tests: asyncssh's own server, run as
`python -m tests.process.sftp_server PORT ROOT HOST_KEY AUTHORIZED_KEYS`. Public-key login
only; every session is chrooted to ROOT. Prints `listening` once it accepts connections."""

from __future__ import annotations

import asyncio
import sys

import asyncssh


async def main(port: int, root: str, host_key: str, authorized: str) -> None:
    await asyncssh.listen(
        "127.0.0.1", port, server_host_keys=[host_key], authorized_client_keys=authorized,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root), allow_scp=False)
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
