"""Catastrophe recovery: the four protocols' runbooks (and, later, their state machines).

`catalog` is what `GET /api/catastrophe/protocols` serves.
"""
