"""Checks that must hold in the durable log's code, kept under `python -O` (persistence imports
nothing of inventoryd, so this is its own twin of `inventoryd.domain.invariant`)."""

from __future__ import annotations

from typing import TypeVar


class PersistenceInvariantViolation(AssertionError):
    """A state the journal must never reach: a bug in its caller or in itself."""


def invariant(condition: bool, message: str, *arguments: object) -> None:
    if not condition:
        raise PersistenceInvariantViolation(message % arguments if arguments else message)


T = TypeVar("T")


def present(value: T | None, message: str, *arguments: object) -> T:
    """`value`, which must not be None."""
    if value is None:
        raise PersistenceInvariantViolation(message % arguments if arguments else message)
    return value
