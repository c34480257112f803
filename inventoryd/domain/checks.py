"""How the state machine says that something impossible happened."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class InvariantViolation(AssertionError):
    """A state that must never exist. Not an outcome: a bug, or a corrupt log."""


def invariant(condition: bool, message: str, *arguments: object) -> None:
    """Raise InvariantViolation unless `condition`. Not `assert`: it must survive `python -O`.
    The message is %-formatted with `arguments` only on failure: these run on every apply."""
    if not condition:
        raise InvariantViolation(message % arguments if arguments else message)


def present(value: T | None, message: str, *arguments: object) -> T:
    """`value`, which must not be None (an invariant, like `invariant`, that also tells the type
    checker so)."""
    if value is None:
        raise InvariantViolation(message % arguments if arguments else message)
    return value
