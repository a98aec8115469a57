"""The schema: queries, mutations, the job subscription, and the limits around them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache, partial
from typing import Any

import strawberry
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    get_operation_ast,
    parse,
)
from strawberry.extensions import (
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from ..reads import SharedReads
from .combinations import SCALARS
from .errors import UNEXPECTED, is_unexpected, log_unexpected
from .limits import REUSE_MAX_CHARS, ParsedOnce, QueryCost
from .mutation import Mutation
from .query import Query
from .subscription import Subscription

#: Deep enough for instructions { edges { node { responses { provenance { model } } } } }
#: and three nested levels of children; introspection (GraphiQL) is not counted.
MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 3000
#: Items an operation may ask for (page sizes multiplied down nested lists).
MAX_COST = 25_000

SUBSCRIPTION_OVER_HTTP = (
    "subscriptions need a websocket (graphql-transport-ws or graphql-ws) at /graphql; "
    "over HTTP send queries and mutations only"
)


class GlanSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log unexpected errors with their traceback (before MaskErrors hides them); the
        caller's mistakes are answered, not logged."""
        log_unexpected(errors)

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Run a query or mutation; a subscription is refused with an error saying where to
        send it. `execute` cannot run one (that is `subscribe`, which the websocket handlers
        call): left to it, a subscription sent over HTTP resolves its field to an async
        generator, fails with a TypeError and reaches the client as an internal error."""
        allowed = set(OperationType if allowed_operation_types is None else allowed_operation_types)

        async def run() -> ExecutionResult:
            return await super(GlanSchema, self).execute(
                query,
                variable_values=variable_values,
                context_value=context_value,
                root_value=root_value,
                operation_name=operation_name,
                allowed_operation_types=allowed - {OperationType.SUBSCRIPTION},
                operation_extensions=operation_extensions,
            )

        try:
            shared: SharedReads | None = getattr(context_value, "shared", None)
            if shared is None or not reads_store_only(query, operation_name):
                return await run()
            # a query of the store alone: its whole answer is shared at one store version
            key = ("answer", query, _canonical(variable_values), operation_name)
            return await shared.get(key, run, keep=lambda result: not result.errors, weigh=_weight)
        except InvalidOperationTypeError as exc:
            subscription = exc.operation_type is OperationType.SUBSCRIPTION
            if subscription and OperationType.SUBSCRIPTION in allowed:
                return ExecutionResult(data=None, errors=[GraphQLError(SUBSCRIPTION_OVER_HTTP)])
            raise  # the view answers the others (a mutation over GET) with a 400


def _weight(result: ExecutionResult) -> int:
    """What a whole answer weighs among those kept (server/reads.py): its JSON's length."""
    return len(json.dumps(result.data, separators=(",", ":"), default=str))


#: Root fields whose answers depend on the store alone (and their arguments): not `job` or
#: `jobs`, which show the live progress of jobs this server runs.
STORE_READS = frozenset(
    {"node", "children", "subtree", "search", "coverage", "gaps", "instructions",
     "sampleInstructions", "__typename"}
)  # fmt: skip


@lru_cache(maxsize=512)
def _root_fields(query: str, operation_name: str | None) -> tuple[str, frozenset[str]] | None:
    """The operation's type and the names of its root fields (fragments followed); None for
    a text that does not parse or name one operation, which execution then reports."""
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return None
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return None
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    names: set[str] = set()
    pending, seen = [operation.selection_set], set()
    while pending:
        for sel in pending.pop().selections:
            if isinstance(sel, FieldNode):
                names.add(sel.name.value)
            elif isinstance(sel, InlineFragmentNode):
                pending.append(sel.selection_set)
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value not in seen:
                seen.add(sel.name.value)
                if (fragment := fragments.get(sel.name.value)) is not None:
                    pending.append(fragment.selection_set)
    return operation.operation.value, frozenset(names)


def reads_store_only(query: str | None, operation_name: str | None) -> bool:
    """Whether an operation is a query whose every root field reads the store alone."""
    if not query or len(query) > REUSE_MAX_CHARS:
        return False
    found = _root_fields(query, operation_name)
    return found is not None and found[0] == "query" and found[1] <= STORE_READS


def _canonical(variables: dict[str, Any] | None) -> str:
    return json.dumps(variables or {}, sort_keys=True, default=str)


schema = GlanSchema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    config=StrawberryConfig(scalar_map=SCALARS),
    extensions=[
        # factories, not instances: each request gets its own extension state
        partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
        partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
        partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        partial(QueryCost, max_cost=MAX_COST),
        # after the rules are added: a text validated once, with them, is not again
        ParsedOnce,
        partial(MaskErrors, should_mask_error=is_unexpected, error_message=UNEXPECTED),
    ],
)
