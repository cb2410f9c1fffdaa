"""File transfer routes: base64 upload with a size cap and a SHA-256, listing, JSON and raw
download, owner-only delete.

Content stays base64 text (the Node server's format). An upload is validated and hashed slice by
slice off the event loop, and downloads are streamed slice by slice, so a file costs a small
multiple of its size in memory and a request never loads any other file.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from aiohttp import hdrs, web

from meshd import log as logging
from meshd.api import auth
from meshd.api.enforcement import require_current
from meshd.api.http import (
    JSON_TYPE,
    body_chunks,
    body_not_json,
    body_object,
    dumps,
    json_response,
    optional_text,
    paging,
    query_text,
    read_body,
    text,
    truthy,
)
from meshd.api.keys import AGENT_ID, settings, storage
from meshd.api.middleware import allow_cors
from meshd.clock import db_time
from meshd.errors import Invalid, NotFound, TooLarge
from meshd.store import agents as agents_store
from meshd.store import files as store
from meshd.store.events import Event, emitting

T = TypeVar("T")
log = logging.get("meshd.files")
routes = web.RouteTableDef()

OFF_LOOP_ABOVE = 1 << 20  # bytes of work that go to a thread instead of the event loop
SCAN_SLICE = 1 << 20  # base64 characters validated at a time (a multiple of 4)
READ_SLICE = 4 << 20  # base64 characters read from the database at a time (a multiple of 4)
SEND_SLICE = 256 << 10  # base64 characters decoded and sent at a time (a multiple of 4)
UPLOAD_SLACK = 64 << 10  # room for the JSON around the base64 text of a maximal upload
WHITESPACE = b" \t\n\r\v\f"
BAD_BASE64 = "fileData is not valid base64"
OCTET_STREAM = "application/octet-stream"
# A media type safe to send back as Content-Type: type/subtype with optional parameters.
MEDIA_TYPE = re.compile(r"^[\w!#$&^.+-]+/[\w!#$&^.+-]+( *;[\x20-\x7e]*)?\Z", re.ASCII)
# What Node's lenient base64 decoder skips, and its URL-safe alphabet mapped to the standard.
LENIENT_SKIP = re.compile(rb"[^A-Za-z0-9+/_-]")
URL_SAFE = bytes.maketrans(b"-_", b"+/")


@dataclass(frozen=True, slots=True)
class Content:
    base64: str  # canonical: the upload's text with whitespace removed
    size: int  # decoded bytes
    sha256: str


def too_large(limit: int) -> TooLarge:
    return TooLarge(f"file is larger than the {limit}-byte limit")


async def off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    """Run CPU work on a thread when it is large enough to stall other requests."""
    if size > OFF_LOOP_ABOVE:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def read_upload(request: web.Request, file_limit: int) -> dict[str, Any]:
    """The upload's JSON body, read with `read_body`'s rules but keeping no copy of the raw
    bytes: `request.read()` caches them for the whole request, which would hold one more copy
    of the file while the write is stored and journaled.

    Memory follows what arrived, never what Content-Length announced (a client can declare
    30 MB and send 6 bytes), and a body that stops arriving times out (408)."""
    limit = file_limit * 4 // 3 + UPLOAD_SLACK
    if request.content_length is not None and request.content_length > limit:
        raise too_large(file_limit)
    raw = bytearray()
    async for chunk in body_chunks(request, settings(request).body_timeout):
        if len(raw) + len(chunk) > limit:
            raise too_large(file_limit)
        raw += chunk
    if not raw or raw.isspace():
        return {}
    try:
        data = await off_loop(len(raw), orjson.loads, raw)
    except orjson.JSONDecodeError as exc:
        return body_not_json(request, exc)
    return body_object(data)


def scan_base64(data: Any, limit: int) -> Content:
    """Validate base64 strictly (whitespace ignored), measure and hash what it decodes to.

    Works in slices, so only a slice of decoded bytes exists at a time; the canonical text is
    the input itself unless it held whitespace."""
    if not isinstance(data, str) or not data.isascii():
        raise Invalid(BAD_BASE64)
    if len(data) <= SCAN_SLICE:
        # The common case, one slice without whitespace: binascii's strict decoder reads the
        # text as it is (no ASCII copy, no whitespace-stripped copy); text it refuses, with
        # whitespace or not base64, goes through the slices below, which tell which.
        try:
            decoded = binascii.a2b_base64(data, strict_mode=True)
        except binascii.Error:
            pass
        else:
            if len(decoded) > limit:
                raise too_large(limit)
            return Content(data, len(decoded), hashlib.sha256(decoded).hexdigest())
    digest = hashlib.sha256()
    size = 0
    canonical: list[str] | None = None  # set once whitespace is seen
    carry = b""  # an incomplete 4-character group, completed by the next slice
    padded = False
    for start in range(0, len(data), SCAN_SLICE):
        raw = data[start:start + SCAN_SLICE].encode("ascii")
        clean = raw.translate(None, WHITESPACE)
        if canonical is None and len(clean) != len(raw):
            canonical = [data[:start]]
        if not clean:
            continue
        if padded:  # text after the final `=`
            raise Invalid(BAD_BASE64)
        if canonical is not None:
            canonical.append(clean.decode("ascii"))
        group = carry + clean
        cut = len(group) - len(group) % 4
        carry = group[cut:]
        try:
            decoded = binascii.a2b_base64(group[:cut], strict_mode=True)
        except binascii.Error:
            raise Invalid(BAD_BASE64) from None
        padded = group[:cut].endswith(b"=")
        size += len(decoded)
        if size > limit:
            raise too_large(limit)
        digest.update(decoded)
    if carry:
        raise Invalid(BAD_BASE64)
    text_ = data if canonical is None else "".join(canonical)
    return Content(text_, size, digest.hexdigest())


def lenient_b64decode(data: str) -> bytes:
    """Decode as Node's Buffer.from(text, "base64") does: characters outside the alphabet
    (URL-safe `-_` included) are skipped and an incomplete last group gives what it can."""
    clean = LENIENT_SKIP.sub(b"", data.encode("ascii", "ignore")).translate(URL_SAFE)
    clean = clean[:len(clean) - (len(clean) % 4 == 1)]
    return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name as RFC 5987 `filename*`."""
    name = filename.replace("/", "_").replace("\\", "_")
    fallback = "".join(c if " " <= c <= "~" and c != '"' else "_" for c in name) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def download_headers(row: dict, size: int, etag: str) -> dict[str, str]:
    file_type = row["file_type"]
    media = file_type if isinstance(file_type, str) and MEDIA_TYPE.match(file_type) else None
    return {
        hdrs.CONTENT_TYPE: media or OCTET_STREAM,
        hdrs.CONTENT_DISPOSITION: content_disposition(str(row["filename"])),
        hdrs.CONTENT_LENGTH: str(size),
        hdrs.ETAG: etag,
        "X-Content-Type-Options": "nosniff",
        # An uploaded HTML, SVG, XML or JavaScript file opened in a browser (despite
        # `attachment`) runs in a sandbox: no scripts, no same-origin access to the API.
        "Content-Security-Policy": "sandbox",
    }


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return etag in tags or "*" in tags


def public_listing(row: dict) -> dict:
    return {
        "id": row["id"],
        "agentId": row["agent_id"],
        "filename": row["filename"],
        "fileType": row["file_type"],
        "fileSize": row["file_size"],
        "description": row["description"],
        "createdAt": row["created_at"],
        "sha256": row["sha256"],
    }


async def load_meta(request: web.Request) -> dict:
    row = await storage(request).read(store.get_meta, request.match_info["id"])
    if row is None:
        raise NotFound("File not found")
    return row


async def stream(request: web.Request, headers: dict[str, str],
                 pieces: AsyncIterator[bytes]) -> web.StreamResponse:
    """Send what `pieces` yields. A client that goes away mid-file is only logged; a file
    deleted mid-stream closes the connection, so the client sees a short body."""
    response = web.StreamResponse(headers=headers)
    allow_cors(request, response)  # sent before the pipeline middleware could add it
    await response.prepare(request)
    if request.method == hdrs.METH_HEAD:
        return response
    try:
        async for piece in pieces:
            await response.write(piece)
        await response.write_eof()
    except ConnectionResetError:
        log.info("files.download_aborted", file_id=request.match_info["id"])
    except FileVanished:
        log.warning("files.deleted_while_sent", file_id=request.match_info["id"])
        response.force_close()
    return response


class FileVanished(Exception):
    """The file was deleted (or its content changed size) while it was being sent."""


async def base64_slices(request: web.Request, row: dict) -> AsyncIterator[str]:
    """The stored base64 of a meshd-written file, read READ_SLICE characters per query so
    that only a slice of it is ever held here (SQLite itself loads the value per query)."""
    length = (row["file_size"] + 2) // 3 * 4
    for start in range(0, length, READ_SLICE):
        part = await storage(request).read(store.read_slice, row["id"], start, READ_SLICE)
        if part is None or len(part) != min(READ_SLICE, length - start):
            raise FileVanished
        for offset in range(0, len(part), SEND_SLICE):
            yield part[offset:offset + SEND_SLICE]


@routes.post("/api/files/upload")
async def upload(request: web.Request) -> web.Response:
    limit = settings(request).max_file_size
    body = await read_upload(request, limit)
    if not all(truthy(body.get(k)) for k in ("agentId", "filename", "fileData")):
        raise Invalid("agentId, filename, and fileData are required")
    agent_id = text(body["agentId"], "agentId")
    await auth.check_agent(request, agent_id)  # the streamed body names it only now
    await require_current(request, request.headers.get("X-Agent-Id") or agent_id)
    filename = text(body["filename"], "filename")
    file_type = optional_text(body, "fileType")
    description = optional_text(body, "description")
    request[AGENT_ID] = agent_id
    # Cheap before the decoding; the write checks again in its transaction.
    if not await storage(request).read(agents_store.exists, agent_id):
        raise NotFound("Agent not found")
    data = body["fileData"]
    content = await off_loop(len(data) if isinstance(data, str) else 0, scan_base64, data, limit)
    del data, body["fileData"]

    def available(file_id: str) -> list[Event]:
        # The contract's keys, raw values as sent, absent ones left out.
        file = {"id": file_id, "agentId": body["agentId"], "filename": body["filename"]}
        if "fileType" in body:
            file["fileType"] = body["fileType"]
        file["fileSize"] = content.size
        if "description" in body:
            file["description"] = body["description"]
        file["sha256"] = content.sha256
        return [Event("file_available", {"file": file})]

    file_id = await storage(request).write(
        emitting(store.create, available), agent_id, filename, file_type, content.size,
        content.base64, description, content.sha256, db_time())
    return json_response({"success": True, "fileId": file_id, "url": f"/api/files/{file_id}",
                          "filename": filename, "fileSize": content.size,
                          "sha256": content.sha256, "message": "File uploaded successfully"})


@routes.get("/api/files")
async def list_files(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    agent_id = query_text(request, "agentId") or None
    rows = await storage(request).read(store.list_files, agent_id, limit, offset)
    return json_response([public_listing(r) for r in rows])


@routes.get("/api/files/{id}/download")
async def download(request: web.Request) -> web.StreamResponse:
    return await send_raw(request, await load_meta(request))


@routes.get("/api/files/{id}")
async def get_file(request: web.Request) -> web.StreamResponse:
    """The row with its base64 twice (`file_data` and `fileData`, as the Node server sent it),
    or with `?raw=1` the file itself."""
    meta = await load_meta(request)
    if request.query.get("raw") in ("1", "true"):
        return await send_raw(request, meta)
    if meta["sha256"] is None:
        # Written by the Node server (at most about 75 KB, RB-07): its text may need escapes.
        row = await load_legacy(request)
        return json_response({**row, "fileData": row["file_data"]})
    # Written by meshd: canonical base64 needs no JSON escapes, so it is sent as it is stored.
    before = {k: meta[k] for k in ("id", "agent_id", "filename", "file_type", "file_size")}
    after = {k: meta[k] for k in ("description", "created_at", "sha256")}
    head = dumps(before)[:-1] + b',"file_data":"'
    middle = b'",' + dumps(after)[1:-1] + b',"fileData":"'
    tail = b'"}'
    length = (meta["file_size"] + 2) // 3 * 4
    headers = {
        hdrs.CONTENT_TYPE: f"{JSON_TYPE}; charset=utf-8",
        hdrs.CONTENT_LENGTH: str(len(head) + len(middle) + len(tail) + 2 * length),
    }

    async def pieces() -> AsyncIterator[bytes]:
        if length <= READ_SLICE:
            # One read of the stored text, sent twice: a larger file is read twice instead,
            # so that only a slice of it is ever held here.
            text = [t.encode("ascii") async for t in base64_slices(request, meta)]
            for part in (head, *text, middle, *text, tail):
                yield part
            return
        for part in (head, middle):
            yield part
            async for text_ in base64_slices(request, meta):
                yield text_.encode("ascii")
        yield tail

    return await stream(request, headers, pieces())


async def load_legacy(request: web.Request) -> dict:
    row = await storage(request).read(store.get, request.match_info["id"])
    if row is None:
        raise NotFound("File not found")
    return row


async def send_raw(request: web.Request, meta: dict) -> web.StreamResponse:
    """The decoded bytes, with the type and name the uploader gave and the SHA-256 as ETag."""
    if meta["sha256"] is None:
        # Node-written: its base64 was never validated, so decode it leniently, whole.
        row = await load_legacy(request)
        data = row["file_data"] or ""
        raw = await off_loop(len(data), lenient_b64decode, data)
        headers = download_headers(meta, len(raw), f'"{hashlib.sha256(raw).hexdigest()}"')

        async def pieces() -> AsyncIterator[bytes]:
            yield raw
    else:
        headers = download_headers(meta, meta["file_size"], f'"{meta["sha256"]}"')

        async def pieces() -> AsyncIterator[bytes]:
            async for part in base64_slices(request, meta):
                yield binascii.a2b_base64(part)

    if etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), headers[hdrs.ETAG]):
        del headers[hdrs.CONTENT_LENGTH]
        return web.Response(status=304, headers=headers)
    return await stream(request, headers, pieces())


@routes.delete("/api/files/{id}")
async def delete_file(request: web.Request) -> web.Response:
    """Only the uploader may delete; the request names who it acts for in the body (as the
    Node server required), the query or the X-Agent-Id header, or by its agent token."""
    body = await read_body(request)
    for candidate in (body.get("agentId"), request.query.get("agentId"),
                      request.headers.get("X-Agent-Id"), auth.token_agent(request)):
        if truthy(candidate):
            agent_id = text(candidate, "agentId")
            break
    else:
        raise Invalid("agentId is required for deletion")
    request[AGENT_ID] = agent_id
    await storage(request).write(store.delete, request.match_info["id"], agent_id)
    return json_response({"success": True, "message": "File deleted successfully"})
