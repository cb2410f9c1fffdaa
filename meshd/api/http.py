"""Request and response helpers with the Node server's semantics (JS truthiness, omitted keys).

Bodies are JSON whatever Content-Type they declare; fields are checked for presence and type
here so that handlers read like the contract's route descriptions.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from meshd.api.keys import SETTINGS
from meshd.errors import Invalid, TooLarge

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# orjson writes at most 254 nested containers; the envelopes meshd wraps free-form values in
# (response objects, lists of rows, WebSocket events) take a few of them.
ENCODER_DEPTH = 254
ENVELOPE_DEPTH = 8
MAX_BODY_DEPTH = ENCODER_DEPTH - ENVELOPE_DEPTH
RAW_BODY: web.RequestKey[bytes] = web.RequestKey("raw_body", bytes)  # the body once read


class _Missing:
    """A field the client did not send: left out of echoes and WebSocket payloads."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
JSON_TYPE = "application/json"


def dumps(obj: Any) -> bytes:
    """orjson, with a second chance for what it refuses but JSON can say: integers beyond
    64 bits go out as floats (as the Node server would print them) and text holding
    undecodable bytes goes out with U+FFFD in their place."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return orjson.dumps(servable(obj))


def servable(value: Any) -> Any:
    """A copy of `value` that orjson can write: big integers as floats, bad text repaired."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= 2**64 - 1 else float(value)
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(str(k)): servable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [servable(v) for v in value]
    return value


def safe_text(value: str) -> str:
    """Text with lone surrogates (undecodable bytes kept by `surrogateescape`) replaced."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def checked_json(data: Any) -> Any:
    """A parsed body as meshd can store and serve it back, or a 400: deeper than the encoder
    can write inside a response is refused at the door (before any write), and integers
    outside 64 bits become floats, as JavaScript's JSON.parse reads them. Iterative, so a
    deep body cannot exhaust the stack."""
    if isinstance(data, int) and not isinstance(data, bool):
        return _int64_or_float(data)
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_BODY_DEPTH:
            raise Invalid(f"JSON body is nested deeper than {MAX_BODY_DEPTH} levels")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))
            elif isinstance(value, int) and not isinstance(value, bool) and not (
                    INT64_MIN <= value <= INT64_MAX):
                node[key] = float(value)
    return data


def _int64_or_float(value: int) -> int | float:
    return value if INT64_MIN <= value <= INT64_MAX else float(value)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None):
    return web.Response(body=dumps(data), status=status, headers=headers,
                        content_type=JSON_TYPE, charset="utf-8")


def truthy(value: Any) -> bool:
    """JavaScript truthiness: `[]` and `{}` count as present; 0, "", false, null do not."""
    if value is None or value is False or value is MISSING:
        return False
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


def js_string(value: Any) -> str:
    """How JavaScript's String() renders a JSON number, so `12345` matches `"12345"`."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def text(value: Any, name: str) -> str:
    """A text field: strings pass, numbers become their JS text, other types are refused
    (the Node server stored them as "[object Object]" or crashed, RB-10)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return js_string(value)
    raise Invalid(f"{name} must be a string")


def stored_content(value: Any) -> str:
    """Message content as the TEXT column holds it. Strings are kept; numbers and booleans
    become their JavaScript text; objects and arrays their JSON text (the Node server stored
    "[object Object]", RB-10). Echoes and events keep the value as sent."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return js_string(value)
    return dumps(value).decode()


def optional_text(body: dict, key: str, default: Any = None) -> Any:
    """The field as text, `default` when absent, None when sent as null."""
    value = body.get(key, MISSING)
    if value is MISSING:
        return default
    if value is None:
        return None
    return text(value, key)


def present(body: dict, *keys: str) -> dict[str, Any]:
    """The keys the client sent (null included), for echoes that leave out absent fields."""
    return {k: body[k] for k in keys if k in body}


async def read_body(request: web.Request, limit: int | None = None) -> dict[str, Any]:
    """The request body as a dict. An empty body, a top-level array (as body-parser gives) or
    a non-JSON body sent with a non-JSON type read as `{}`, so the route's own 400 answers."""
    settings = request.app[SETTINGS]
    limit = limit or settings.max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"request body is larger than {limit} bytes")
    raw = request.get(RAW_BODY)
    if raw is None:  # read once: enforcement reads the body before the handler does
        raw = bytearray()
        async for chunk in body_chunks(request, settings.body_timeout):
            raw += chunk
            if len(raw) > limit:
                raise TooLarge(f"request body is larger than {limit} bytes")
        request[RAW_BODY] = raw = bytes(raw)
    if len(raw) > limit:
        raise TooLarge(f"request body is larger than {limit} bytes")
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return body_not_json(request, exc, raw)
    return body_object(data)


async def body_chunks(request: web.Request, idle_timeout: float):
    """The body as it arrives. A client silent for `idle_timeout` seconds mid-body gets a
    408, and a body its Content-Encoding does not decode a 400: neither is a server error."""
    content = request.content
    while True:
        try:
            if content.is_eof():
                # All of it has arrived (a small body comes with its head): reading cannot
                # wait, so no deadline is armed (a timer per chunk on every request).
                chunk = await content.readany()
            else:
                async with asyncio.timeout(idle_timeout):
                    chunk = await content.readany()
        except TimeoutError:
            raise RequestTimeout("the request body stopped arriving") from None
        except (web.RequestPayloadError, HttpProcessingError):  # bad gzip, bad chunking
            raise Invalid("the request body could not be decoded") from None
        if not chunk:
            return
        yield chunk


class RequestTimeout(Invalid):
    status = 408


def body_not_json(request: web.Request, exc: Exception, raw: bytes = b"") -> dict[str, Any]:
    """Malformed JSON is a 400 when the client said it sent JSON, or when the body looks like
    JSON whatever its type (`curl -d '{"name": "x",}'` sends a form type); a form or text body
    that is not JSON reads as `{}`, so the route's own "required" 400 answers."""
    if (JSON_TYPE in (request.content_type or "") or request.content_type.endswith("+json")
            or looks_like_json(raw)):
        raise Invalid(f"malformed JSON body: {exc}") from None
    return {}


def looks_like_json(raw: bytes) -> bool:
    return raw.lstrip()[:1] in (b"{", b"[")


def body_object(data: Any) -> dict[str, Any]:
    """A top-level object is the body; an array reads as `{}` (as body-parser gives)."""
    if isinstance(data, dict):
        return checked_json(data)
    if isinstance(data, list):
        return {}
    raise Invalid("JSON body must be an object")


def query_text(request: web.Request, name: str) -> str | None:
    """The first value of a query parameter (Express would make a repeated one an array)."""
    return request.query.get(name)


def query_flag(request: web.Request, name: str) -> bool:
    """Exactly the string "true", as the Node server checks `unreadOnly` and `activeOnly`."""
    return request.query.get(name) == "true"


def paging(request: web.Request) -> tuple[int, int]:
    """`limit` and `offset`; without them every row is returned, as old clients expect."""
    limit = _non_negative_int(request, "limit", -1)
    offset = _non_negative_int(request, "offset", 0)
    return limit, offset


def _non_negative_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be a non-negative integer") from None
    if not 0 <= value <= INT64_MAX:
        raise Invalid(f"{name} must be an integer from 0 to {INT64_MAX}")
    return value


def parse_json_column(value: Any) -> Any:
    """JSON text columns come back parsed; text that is not JSON is returned as it is."""
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except (orjson.JSONDecodeError, TypeError):
        return value
