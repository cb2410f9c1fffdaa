"""Request and response helpers with the Node server's semantics (JS truthiness, omitted keys).

Bodies are JSON whatever Content-Type they declare; fields are checked for presence and type
here so that handlers read like the contract's route descriptions.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from meshd.api.keys import SETTINGS
from meshd.errors import Invalid, TooLarge


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
    return orjson.dumps(obj)


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
    limit = limit or request.app[SETTINGS].max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"request body is larger than {limit} bytes")
    raw = await request.read()
    if len(raw) > limit:
        raise TooLarge(f"request body is larger than {limit} bytes")
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return body_not_json(request, exc, raw)
    return body_object(data)


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
        return data
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
    if value < 0:
        raise Invalid(f"{name} must be a non-negative integer")
    return value


def parse_json_column(value: Any) -> Any:
    """JSON text columns come back parsed; text that is not JSON is returned as it is."""
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except (orjson.JSONDecodeError, TypeError):
        return value
