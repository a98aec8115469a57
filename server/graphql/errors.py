"""Expected failures as schema types, and the line between expected and unexpected.

A caller who names a missing path, the wrong kind, an unapproved scope or a busy scope gets
a typed result it can branch on (`... on NotFoundError { path }`), with a message that
says what to do. Anything else is a bug or an outage: it is logged with its traceback and
the client sees only a generic message, never internals such as a query or a file path.
"""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from graphql import GraphQLError

from generators.manager import JobConflict, JobNotFound
from graph.errors import (
    GlanError,
    InvalidInput,
    NodeNotFound,
    ScopeNotApproved,
    StoreMemoryExceeded,
    WrongKind,
)

from .node import Kind

log = logging.getLogger("glan.server")

UNEXPECTED = "internal error: the server could not complete this request (see its log)"


@strawberry.interface(description="An expected failure; `message` says what to do about it.")
class Problem:
    message: str


@strawberry.type(description="No node at this path or id, or no job with this id.")
class NotFoundError(Problem):
    path: str | None = None
    id: strawberry.ID | None = None


@strawberry.type(description="A value given is not acceptable; nothing was changed.")
class InvalidInputError(Problem):
    pass


@strawberry.type(description="The kind does not fit here (e.g. a Subject under a Field).")
class WrongKindError(Problem):
    kind: Kind | None = None
    parent_kind: Kind | None = None


@strawberry.type(description="Generation runs only under approved nodes; review this one.")
class NotApprovedError(Problem):
    path: str
    status: str


@strawberry.type(description="A job of this stage already runs on an overlapping scope.")
class JobConflictError(Problem):
    job_id: strawberry.ID


def problem(exc: GlanError) -> Any:
    """The typed result for an expected failure (the most specific type that fits)."""
    if isinstance(exc, NodeNotFound):
        return NotFoundError(message=str(exc), path=exc.path)
    if isinstance(exc, JobNotFound):
        return NotFoundError(message=str(exc), id=strawberry.ID(exc.job_id))
    if isinstance(exc, ScopeNotApproved):
        return NotApprovedError(message=str(exc), path=exc.path, status=exc.status)
    if isinstance(exc, WrongKind):
        return WrongKindError(
            message=str(exc), kind=Kind.parse(exc.kind), parent_kind=Kind.parse(exc.parent_kind)
        )
    if isinstance(exc, JobConflict):
        return JobConflictError(message=str(exc), job_id=strawberry.ID(exc.job_id))
    if isinstance(exc, InvalidInput):
        return InvalidInputError(message=str(exc))
    raise exc  # a GlanError that is not the caller's doing (e.g. the database failed)


#: Errors the client is shown. StoreMemoryExceeded is the operator's to act on, not a bug:
#: its message names the setting to raise and holds no query or file path.
EXPECTED = (InvalidInput, NodeNotFound, JobNotFound, JobConflict, StoreMemoryExceeded, GraphQLError)


def is_unexpected(error: GraphQLError) -> bool:
    """Whether an error must be hidden from the client: raised by our code (not a syntax,
    validation or permission error) and not one of the caller's mistakes."""
    original = error.original_error
    return original is not None and not isinstance(original, EXPECTED)


def log_unexpected(errors: list[GraphQLError]) -> None:
    for error in errors:
        if is_unexpected(error):
            log.error(
                "unexpected error at %s",
                ".".join(map(str, error.path or [])) or "(operation)",
                exc_info=error.original_error,
            )
