"""The schema: queries, mutations, the job subscription, and the limits around them."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from .errors import UNEXPECTED, is_unexpected, log_unexpected
from .limits import ParsedOnce, QueryCost
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
        try:
            return await super().execute(
                query,
                variable_values=variable_values,
                context_value=context_value,
                root_value=root_value,
                operation_name=operation_name,
                allowed_operation_types=allowed - {OperationType.SUBSCRIPTION},
                operation_extensions=operation_extensions,
            )
        except InvalidOperationTypeError as exc:
            subscription = exc.operation_type is OperationType.SUBSCRIPTION
            if subscription and OperationType.SUBSCRIPTION in allowed:
                return ExecutionResult(data=None, errors=[GraphQLError(SUBSCRIPTION_OVER_HTTP)])
            raise  # the view answers the others (a mutation over GET) with a 400


schema = GlanSchema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
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
