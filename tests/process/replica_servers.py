"""Replica servers on loopback for process tests: moto's standalone S3 server and an asyncssh
SFTP server, each a real subprocess the test can kill and start again."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from tests.process.harness import clean_env, free_port, poll

ACCESS_KEY, SECRET_KEY = "meshd-test-access", "meshd-test-secret-value"
BUCKET = "meshd-replica"


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    import socket

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    poll(up, 30, f"{what} on port {port}", interval=0.1)


@dataclass
class S3Server:
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str = "mesh") -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "moto.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env())
        _wait_port(self.port, self.proc, "moto_server")
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
                     ).create_bucket(Bucket=BUCKET)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class SftpServer:
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = self.root / "files"
        self.files.mkdir(exist_ok=True)
        host = asyncssh.generate_private_key("ssh-ed25519")
        client = asyncssh.generate_private_key("ssh-ed25519")
        self.host_key = self.root / "host_key"
        self.client_key = self.root / "client_key"
        host.write_private_key(str(self.host_key))
        client.write_private_key(str(self.client_key))
        self.client_key.chmod(0o600)
        self.authorized = self.root / "authorized_keys"
        client.write_public_key(str(self.authorized))
        self.known_hosts = self.root / "known_hosts"
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} {host.export_public_key().decode().strip()}\n")

    def url(self, path: str = "replica") -> str:
        return f"sftp://tester@127.0.0.1:{self.port}/{path}?known_hosts={self.known_hosts}"

    @property
    def env(self) -> dict[str, str]:
        return {"MESHD_SFTP_KEY": str(self.client_key)}

    def start(self) -> SftpServer:
        log = (self.root / "sftp.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.process.sftp_server", str(self.port),
             str(self.files), str(self.host_key), str(self.authorized)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env(),
            cwd=Path(__file__).resolve().parents[2])
        _wait_port(self.port, self.proc, "sftp server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
