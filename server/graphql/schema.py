"""The schema: queries, mutations, the job subscription, and the limits around them."""

from __future__ import annotations

from functools import partial

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.types import ExecutionContext

from .errors import UNEXPECTED, is_unexpected, log_unexpected
from .limits import QueryCost
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


class GlanSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log unexpected errors with their traceback (before MaskErrors hides them); the
        caller's mistakes are answered, not logged."""
        log_unexpected(errors)


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
        partial(MaskErrors, should_mask_error=is_unexpected, error_message=UNEXPECTED),
    ],
)
