"""Catastrophe recovery: the four protocols as state machines, and the engine that runs them.

`protocols.catalog()` is what `GET /api/catastrophe/protocols` serves; `protocols/*.md` are the
operator runbooks of the same states.
"""
