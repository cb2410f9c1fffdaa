"""File transfer routes: upload, JSON and raw download, listing, owner-only delete; their bad
inputs, the size limit, the file_available event and a 20 MiB round trip."""

from __future__ import annotations

import base64
import hashlib
import random

import aiohttp
import orjson
import pytest

from meshd.api import files as files_api
from meshd.errors import MeshError
from meshd.store import files as files_store
from tests.conftest import call, next_event, register, ws_connect

JSON = {"Content-Type": "application/json"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def upload(client, agent_id: str, data: bytes, filename: str = "a.bin", **fields) -> dict:
    body = {"agentId": agent_id, "filename": filename, "fileData": b64(data), **fields}
    status, resp = await call(client, "POST", "/api/files/upload", body)
    assert status == 200, resp
    return resp


async def test_upload_announces_and_returns_id_size_and_hash(client):
    owner = await register(client, "Owner")
    ws = await ws_connect(client)
    data = b"hello mesh\n"
    resp = await upload(client, owner, data, "notes.txt", fileType="text/plain",
                        description="greeting")
    digest = hashlib.sha256(data).hexdigest()
    file_id = resp["fileId"]
    assert resp == {"success": True, "fileId": file_id, "url": f"/api/files/{file_id}",
                    "filename": "notes.txt", "fileSize": len(data), "sha256": digest,
                    "message": "File uploaded successfully"}
    event = await next_event(ws, "file_available")
    assert event["file"] == {"id": file_id, "agentId": owner, "filename": "notes.txt",
                             "fileType": "text/plain", "fileSize": len(data),
                             "description": "greeting", "sha256": digest}
    # Absent optional fields are left out of the event; an explicit null is kept.
    await upload(client, owner, b"x", description=None)
    event = await next_event(ws, "file_available")
    assert "fileType" not in event["file"] and event["file"]["description"] is None
    await ws.close()


async def test_get_returns_the_row_with_the_content_twice(client):
    owner = await register(client, "Owner")
    data = bytes(range(256)) * 3
    file_id = (await upload(client, owner, data, "bytes.bin", fileType="application/x-demo"))[
        "fileId"]
    resp = await client.get(f"/api/files/{file_id}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    raw = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(raw)
    row = orjson.loads(raw)
    assert list(row) == ["id", "agent_id", "filename", "file_type", "file_size", "file_data",
                         "description", "created_at", "sha256", "fileData"]
    assert row["file_data"] == row["fileData"] == b64(data)
    assert (row["id"], row["agent_id"], row["filename"], row["file_type"], row["file_size"],
            row["description"], row["sha256"]) == (
        file_id, owner, "bytes.bin", "application/x-demo", len(data), None,
        hashlib.sha256(data).hexdigest())
    assert len(row["created_at"]) == 19 and "T" not in row["created_at"]
    assert await call(client, "GET", "/api/files/nope") == (404, {"error": "File not found"})


async def test_raw_download_sends_the_bytes_with_type_name_and_etag(client):
    owner = await register(client, "Owner")
    data = random.Random(1).randbytes(700_001)
    file_id = (await upload(client, owner, data, "résumé v2.pdf",
                            fileType="application/pdf"))["fileId"]
    for path in (f"/api/files/{file_id}?raw=1", f"/api/files/{file_id}/download"):
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.read() == data
        assert resp.headers["Content-Type"] == "application/pdf"
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.headers["Content-Disposition"] == (
            "attachment; filename=\"r_sum_ v2.pdf\"; "
            "filename*=UTF-8''r%C3%A9sum%C3%A9%20v2.pdf")
        assert resp.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    etag = resp.headers["ETag"]
    resp = await client.get(f"/api/files/{file_id}/download", headers={"If-None-Match": etag})
    assert resp.status == 304 and await resp.read() == b""
    resp = await client.head(f"/api/files/{file_id}/download")
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
    assert await resp.read() == b""
    assert await call(client, "GET", "/api/files/nope/download") == (
        404, {"error": "File not found"})
    assert (await call(client, "GET", "/api/files/nope?raw=1"))[0] == 404


async def test_raw_download_without_or_with_an_unsafe_type_is_octet_stream(client):
    owner = await register(client, "Owner")
    for file_type in (None, "text/html\r\nX-Evil: 1", "text/plain\n", "nonsense"):
        fields = {} if file_type is None else {"fileType": file_type}
        file_id = (await upload(client, owner, b"<b>hi</b>", "page.html", **fields))["fileId"]
        resp = await client.get(f"/api/files/{file_id}/download")
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "X-Evil" not in resp.headers


async def test_whitespace_in_base64_is_ignored_and_stored_canonical(client):
    owner = await register(client, "Owner")
    data = random.Random(2).randbytes(5000)
    wrapped = base64.encodebytes(data).decode()  # newline every 76 characters, like `base64`
    status, resp = await call(client, "POST", "/api/files/upload",
                              {"agentId": owner, "filename": "w.bin", "fileData": wrapped})
    assert status == 200 and resp["fileSize"] == len(data)
    _, row = await call(client, "GET", f"/api/files/{resp['fileId']}")
    assert row["file_data"] == b64(data)


async def test_upload_bad_inputs(client):
    owner = await register(client, "Owner")
    required = {"error": "agentId, filename, and fileData are required"}
    good = {"agentId": owner, "filename": "f", "fileData": "aGk="}
    for missing in ("agentId", "filename", "fileData"):
        for value in (None, "", 0, False):
            body = {**good, missing: value}
            assert await call(client, "POST", "/api/files/upload", body) == (400, required)
        body = {k: v for k, v in good.items() if k != missing}
        assert await call(client, "POST", "/api/files/upload", body) == (400, required)
    assert await call(client, "POST", "/api/files/upload", []) == (400, required)
    invalid = {"error": "fileData is not valid base64"}
    for data in ("!!!not base64***", "aGk", "aGk=aGk=", "aGk=x", "aG=k", "aGk=\u00e9",
                 "aGVs-bG8", 123, ["aGk="], {"a": 1}):
        body = {**good, "fileData": data}
        assert await call(client, "POST", "/api/files/upload", body) == (400, invalid), data
    status, resp = await call(client, "POST", "/api/files/upload", {**good, "filename": {}})
    assert status == 400 and "filename" in resp["error"]
    status, resp = await call(client, "POST", "/api/files/upload", {**good, "fileType": [1]})
    assert status == 400 and "fileType" in resp["error"]
    status, resp = await call(client, "POST", "/api/files/upload", data=b"{bad",
                              headers=JSON)
    assert status == 400 and "malformed JSON" in resp["error"]
    status, resp = await call(client, "POST", "/api/files/upload", data=b'"x"', headers=JSON)
    assert status == 400
    # The agent is checked before the content, as the Node server did.
    assert await call(client, "POST", "/api/files/upload",
                      {**good, "agentId": "ghost", "fileData": "!!"}) == (
        404, {"error": "Agent not found"})
    _, files = await call(client, "GET", "/api/files")
    assert files == []


async def test_curl_style_form_content_type_upload(client):
    """The seed's curl -d examples; the body is JSON whatever the declared type."""
    owner = await register(client, "Owner")
    body = orjson.dumps({"agentId": owner, "filename": "doc.pdf", "fileType": "application/pdf",
                         "fileData": b64(b"%PDF-1.4"), "description": "Research document"})
    status, resp = await call(client, "POST", "/api/files/upload", data=body,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and resp["fileSize"] == 8
    resp = await client.get(f"/api/files/{resp['fileId']}")
    assert base64.b64decode((await resp.json())["fileData"]) == b"%PDF-1.4"


async def test_list_is_metadata_only_filtered_and_paged(client):
    a = await register(client, "A")
    b = await register(client, "B")
    ids_a = [(await upload(client, a, b"a%d" % i, f"a{i}"))["fileId"] for i in range(3)]
    id_b = (await upload(client, b, b"b", "b", fileType="text/plain"))["fileId"]
    status, rows = await call(client, "GET", "/api/files")
    assert status == 200 and {r["id"] for r in rows} == {*ids_a, id_b}
    row_b = next(r for r in rows if r["id"] == id_b)
    assert row_b == {"id": id_b, "agentId": b, "filename": "b", "fileType": "text/plain",
                     "fileSize": 1, "description": None, "createdAt": row_b["createdAt"],
                     "sha256": hashlib.sha256(b"b").hexdigest()}
    _, rows = await call(client, "GET", f"/api/files?agentId={a}")
    assert {r["id"] for r in rows} == set(ids_a)
    _, rows = await call(client, "GET", "/api/files?agentId=")
    assert len(rows) == 4
    _, rows = await call(client, "GET", "/api/files?agentId=ghost")
    assert rows == []
    _, page = await call(client, "GET", f"/api/files?agentId={a}&limit=2&offset=1")
    assert [r["id"] for r in page] == [r["id"] for r in (await call(
        client, "GET", f"/api/files?agentId={a}"))[1]][1:3]
    assert (await call(client, "GET", "/api/files?limit=x"))[0] == 400


async def test_list_is_newest_first(client, storage):
    owner = await register(client, "Owner")
    ids = [(await upload(client, owner, b"%d" % i))["fileId"] for i in range(3)]
    for file_id, stamp in zip(ids, ("2030-01-02 00:00:00", "2030-01-03 00:00:00",
                                    "2030-01-01 00:00:00"), strict=True):
        await storage.write(lambda tx, f=file_id, s=stamp: tx.execute(
            "UPDATE agent_files SET created_at = ? WHERE id = ?", (s, f)))
    _, rows = await call(client, "GET", "/api/files")
    assert [r["id"] for r in rows] == [ids[1], ids[0], ids[2]]


async def test_delete_only_by_the_owner(client):
    owner = await register(client, "Owner")
    other = await register(client, "Other")
    file_ids = [(await upload(client, owner, b"x"))["fileId"] for _ in range(3)]
    path = f"/api/files/{file_ids[0]}"
    assert await call(client, "DELETE", path) == (
        400, {"error": "agentId is required for deletion"})
    assert await call(client, "DELETE", path, {"agentId": ""}) == (
        400, {"error": "agentId is required for deletion"})
    assert await call(client, "DELETE", "/api/files/nope", {"agentId": owner}) == (
        404, {"error": "File not found"})
    forbidden = (403, {"error": "You can only delete your own files"})
    assert await call(client, "DELETE", path, {"agentId": other}) == forbidden
    assert await call(client, "DELETE", f"{path}?agentId={other}") == forbidden
    assert await call(client, "DELETE", path, headers={"X-Agent-Id": other}) == forbidden
    assert (await call(client, "GET", path))[0] == 200
    deleted = (200, {"success": True, "message": "File deleted successfully"})
    assert await call(client, "DELETE", path, {"agentId": owner}) == deleted
    assert await call(client, "GET", path) == (404, {"error": "File not found"})
    assert await call(client, "DELETE", f"/api/files/{file_ids[1]}?agentId={owner}") == deleted
    assert await call(client, "DELETE", f"/api/files/{file_ids[2]}",
                      headers={"X-Agent-Id": owner}) == deleted
    assert (await call(client, "GET", "/api/files"))[1] == []


async def test_node_written_file_is_served(client, storage):
    """A row from a Node database: no sha256, base64 that Node accepted leniently."""
    owner = await register(client, "Owner")
    await storage.write(lambda tx: tx.execute(
        "INSERT INTO agent_files (id, agent_id, filename, file_type, file_size, file_data,"
        " description, created_at) VALUES ('legacy', ?, 'old.txt', 'text/plain', 6,"
        " '!!!not base64***', NULL, '2026-11-24 22:58:16')", (owner,)))
    status, row = await call(client, "GET", "/api/files/legacy")
    assert status == 200
    assert row["file_data"] == row["fileData"] == "!!!not base64***"
    assert row["sha256"] is None
    resp = await client.get("/api/files/legacy?raw=1")
    data = await resp.read()
    assert data == base64.b64decode("notbase6") and len(data) == 6
    assert resp.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'


@pytest.mark.parametrize("size", [0, 1, 2, 3, 10, 11, 12, 13, 50])
async def test_downloads_in_many_slices(client, monkeypatch, size):
    """Slices smaller than the file: every boundary case of the sliced reads and sends."""
    monkeypatch.setattr(files_api, "READ_SLICE", 8)
    monkeypatch.setattr(files_api, "SEND_SLICE", 4)
    owner = await register(client, "Owner")
    data = random.Random(size).randbytes(size)
    body = {"agentId": owner, "filename": "s", "fileData": b64(data) or "\n"}
    status, resp = await call(client, "POST", "/api/files/upload", body)
    assert status == 200 and resp["fileSize"] == size
    resp = await client.get(f"/api/files/{resp['fileId']}")
    raw = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(raw)
    row = orjson.loads(raw)
    assert row["file_data"] == row["fileData"] == b64(data)
    resp = await client.get(f"/api/files/{row['id']}/download")
    assert await resp.read() == data


async def test_file_deleted_while_sent_ends_the_connection(client, monkeypatch):
    monkeypatch.setattr(files_api, "READ_SLICE", 8)
    owner = await register(client, "Owner")
    file_id = (await upload(client, owner, b"x" * 30))["fileId"]
    calls = []
    read_slice = files_store.read_slice

    def vanishing(db, *args):
        calls.append(args)
        return read_slice(db, *args) if len(calls) == 1 else None

    monkeypatch.setattr(files_store, "read_slice", vanishing)
    resp = await client.get(f"/api/files/{file_id}?raw=1")
    assert resp.status == 200
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in resp.content.iter_any():
            received += chunk
    assert received == b"x" * 6  # the first slice only
    assert len(calls) == 2


async def test_twenty_mib_round_trip_is_byte_identical(client):
    owner = await register(client, "Owner")
    data = random.Random(20).randbytes(20 << 20)
    body = orjson.dumps({"agentId": owner, "filename": "big.bin", "fileData": b64(data)})
    status, resp = await call(client, "POST", "/api/files/upload", data=body, headers=JSON)
    assert status == 200, resp
    assert resp["fileSize"] == len(data)
    assert resp["sha256"] == hashlib.sha256(data).hexdigest()
    raw = await client.get(f"/api/files/{resp['fileId']}?raw=1")
    assert await raw.read() == data
    row = orjson.loads(await (await client.get(resp["url"])).read())
    assert base64.b64decode(row["fileData"]) == data
    assert row["file_data"] == row["fileData"]


@pytest.fixture
async def small_limit_client(make_client):
    return await make_client(max_file_size="1KiB")


async def test_size_limit_is_a_json_413(small_limit_client):
    client = small_limit_client
    owner = await register(client, "Owner")
    too_large = (413, {"error": "file is larger than the 1024-byte limit"})
    assert (await call(client, "POST", "/api/files/upload",
                       {"agentId": owner, "filename": "f", "fileData": b64(b"x" * 1024)}))[0] \
        == 200
    assert await call(client, "POST", "/api/files/upload", {
        "agentId": owner, "filename": "f", "fileData": b64(b"x" * 1025)}) == too_large
    # A body far beyond the limit is refused before it is read, with or without a length.
    huge = orjson.dumps({"agentId": owner, "filename": "f", "fileData": "A" * (200 << 10)})
    assert await call(client, "POST", "/api/files/upload", data=huge, headers=JSON) == too_large

    async def chunked():
        for start in range(0, len(huge), 8192):
            yield huge[start:start + 8192]

    assert await call(client, "POST", "/api/files/upload", data=chunked(),
                      headers=JSON) == too_large


@pytest.mark.parametrize("text", [
    "QUJD", "QUJDRA==", "QUJDRA=", "QQ==QQ==", "Q===", "QQ", "@@@@", "QUJD\nRA==", " QUJD",
    "QUJDRA==\n", "QUJ=RA==", base64.b64encode(bytes(range(256)) * 40).decode(),
    "\t".join(base64.b64encode(bytes(range(256)) * 40).decode()[i:i + 76]
              for i in range(0, 13656, 76)),
])
def test_the_one_slice_fast_path_agrees_with_the_slices(monkeypatch, text):
    """A body of one slice is decoded by binascii at once; forced through 4-character slices,
    the same text gives the same content (canonical text, size, hash) or the same refusal."""
    def outcome():
        try:
            found = files_api.scan_base64(text, 1 << 20)
        except MeshError as exc:
            return type(exc).__name__, exc.message
        return found.base64, found.size, found.sha256
    fast = outcome()
    monkeypatch.setattr(files_api, "SCAN_SLICE", 4)
    assert outcome() == fast


@pytest.mark.parametrize(("read_slice", "reads"), [(None, 1), (8, 2 * 4)])
async def test_the_json_download_reads_a_small_file_once(client, monkeypatch, read_slice, reads):
    """The JSON form carries the text twice (`file_data`, `fileData`): a file within one read
    slice is read from the database once; a larger one is read again for the second copy, so
    that only a slice is held."""
    if read_slice:
        monkeypatch.setattr(files_api, "READ_SLICE", read_slice)
    owner = await register(client, "Owner")
    data = random.Random(7).randbytes(24)  # 32 characters of base64: 4 slices of 8
    file_id = (await upload(client, owner, data))["fileId"]
    calls = []
    read = files_store.read_slice

    def counted(db, *args):
        calls.append(args)
        return read(db, *args)

    monkeypatch.setattr(files_store, "read_slice", counted)
    resp = await client.get(f"/api/files/{file_id}")
    row = orjson.loads(await resp.read())
    assert row["file_data"] == row["fileData"] == b64(data)
    assert len(calls) == reads
