"""Replica URLs, checked when settings load: a malformed one refuses to start, so a typo is
not found on the day the host is lost. Secrets never go in the URL (it is logged and shown in
`meshd status`); they come from the environment or the `replica_credentials` file."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

SCHEMES = ("file", "sftp", "s3")
_PARAMS = {"file": set(), "sftp": {"known_hosts"}, "s3": {"endpoint", "region"}}


class ReplicaURLError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ReplicaURL:
    url: str
    scheme: str
    host: str = ""  # the bucket for s3://
    port: int | None = None
    user: str | None = None
    path: str = ""  # directory (file, sftp) or key prefix (s3), without trailing slash
    params: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """How logs, events and status name this replica (no query string)."""
        port = f":{self.port}" if self.port else ""
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{user}{self.host}{port}/{self.path.lstrip('/')}"


def parse(text: str) -> ReplicaURL:
    text = str(text).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ReplicaURLError(f"{text!r} is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ReplicaURLError(f"{text!r}: scheme must be one of file://, sftp://, s3://")
    if parts.password is not None:
        raise ReplicaURLError(f"{scheme}:// URL holds a password; put secrets in the "
                              "environment or the replica_credentials file, never in a URL")
    if parts.fragment:
        raise ReplicaURLError(f"{text!r}: a replica URL has no #fragment")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(params) - _PARAMS[scheme]
    if unknown:
        raise ReplicaURLError(f"{text!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
    path = parts.path.rstrip("/")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ReplicaURLError(f"{text!r}: file:// takes an absolute path (file:///mnt/x)")
        if not path.startswith("/"):
            raise ReplicaURLError(f"{text!r}: file:// takes an absolute path")
        return ReplicaURL(text, scheme, path=path, params=params)
    if not parts.hostname:
        raise ReplicaURLError(f"{text!r}: names no {'bucket' if scheme == 's3' else 'host'}")
    if scheme == "sftp":
        if not path:
            raise ReplicaURLError(f"{text!r}: sftp:// needs a directory (sftp://user@host/dir)")
        return ReplicaURL(text, scheme, parts.hostname, port, parts.username, path, params)
    if parts.username is not None or port is not None:
        raise ReplicaURLError(f"{text!r}: s3:// is s3://bucket/prefix (endpoint= for others)")
    endpoint = params.get("endpoint")
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ReplicaURLError(f"{text!r}: endpoint must be an http(s) URL")
    return ReplicaURL(text, scheme, parts.hostname, None, None, path.lstrip("/"), params)


def parse_list(value) -> tuple[ReplicaURL, ...]:
    """From TOML (a list) or a flag/variable (comma-separated)."""
    if isinstance(value, str):
        items = [v for v in (s.strip() for s in value.split(",")) if v]
    elif isinstance(value, list | tuple):
        items = [str(v).strip() for v in value]
    else:
        raise ReplicaURLError(f"not a list of URLs: {value!r}")
    urls = tuple(parse(v) for v in items)
    names = [u.name for u in urls]
    if len(set(names)) != len(names):
        raise ReplicaURLError("the same replica is listed twice")
    return urls
