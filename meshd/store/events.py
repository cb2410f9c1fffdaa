"""Events a write causes, emitted in one place.

A write declares its events on its transaction (`tx.emit(Event(...))`, or `emitting(fn,
events)` around a store function when the event echoes the request). Each is encoded (orjson)
at once, inside the write's savepoint, so an event that cannot be encoded fails the write with
a 400 before anything is committed, instead of failing after. After COMMIT the storage hands
the batch's encoded events, in order, to its one sink (the WebSocket hub); a write that rolls
back emits nothing.

This is where an event gets its id and an `events` row later: `Tx.emit` runs inside the write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from meshd.errors import Invalid

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    payload: dict[str, Any]  # the frame's fields beside "type"
    audience: Iterable[str] | None = None  # the agents it is addressed to (None: everyone)


@dataclass(frozen=True, slots=True)
class Encoded:
    """An event ready for the wire: its frame as JSON text, encoded once for every client."""

    type: str
    data: str
    audience: frozenset[str] | None


def encode(event: Event) -> Encoded:
    try:
        data = orjson.dumps({"type": event.type, **event.payload}).decode()
    except TypeError as exc:  # orjson: integers beyond 64 bits, non-JSON values
        raise Invalid(f"the {event.type} event cannot be encoded as JSON: {exc}") from None
    audience = frozenset(event.audience) if event.audience is not None else None
    return Encoded(event.type, data, audience)


def emitting(fn: Callable[..., T], events: Callable[[T], Iterable[Event]]) -> Callable[..., T]:
    """`fn` as a write that also emits `events(result)` (built in the write, from its result
    and whatever the caller closed over, such as the request's fields)."""

    def write(tx, *args: Any) -> T:
        result = fn(tx, *args)
        for event in events(result):
            tx.emit(event)
        return result

    write.__name__ = getattr(fn, "__name__", "write")
    return write


Sink = Callable[[list[Encoded]], None]
