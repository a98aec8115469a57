"""Limits that turn abusive queries away before they reach the store.

Depth, alias and token limits come from strawberry. What they cannot see is size: two
nested `children(first: 500)` are shallow and short but ask for 250,000 nodes. `QueryCost`
estimates the nodes an operation can return, multiplying page sizes (`first`, `n`) down
the selection, and refuses the operation before anything runs when the estimate is over
the limit.

A mutation's payload is resolved after its write: a bad page size or cursor in a nested
field would fail then, turning a committed write into `data: null`. So for mutations the
same walk checks those arguments first, and a mutation with one out of bounds is refused
before it changes anything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    SelectionSetNode,
    get_named_type,
    get_operation_ast,
    is_object_type,
)
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.type import GraphQLInterfaceType, GraphQLNamedType, GraphQLObjectType
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from graph.errors import InvalidInput

from .pagination import decode_cursor, page_size

#: Arguments that say how many items a list field returns.
SIZE_ARGUMENTS = ("first", "n")
#: Nested arguments a mutation's payload must get right before the mutation runs: each
#: check raises InvalidInput as its resolver would.
PAYLOAD_CHECKS: dict[str, Any] = {"first": page_size, "after": decode_cursor}


class QueryCost(SchemaExtension):
    def __init__(self, *, max_cost: int) -> None:
        self.max_cost = max_cost

    def on_execute(self) -> Iterator[None]:
        ctx = self.execution_context
        document = ctx.graphql_document
        if document is not None and ctx.operation_type != OperationType.SUBSCRIPTION:
            walker = walk(ctx.schema._schema, document, ctx.operation_name, ctx.variables or {})
            message = None
            if walker.cost > self.max_cost:
                message = (
                    f"query too large: it could return about {walker.cost:,} items, over the "
                    f"limit of {self.max_cost:,}; ask for smaller pages (first/n) or fewer "
                    "nested lists"
                )
            elif ctx.operation_type == OperationType.MUTATION and walker.problems:
                message = f"nothing was changed: {'; '.join(walker.problems)}"
            if message is not None:
                # a result set here means strawberry does not execute the operation
                ctx.result = GraphQLExecutionResult(data=None, errors=[GraphQLError(message)])
        yield


def walk(
    schema: GraphQLSchema, document: Any, operation_name: str | None, variables: dict[str, Any]
) -> _Walker:
    """One walk of the operation's selection: its cost (the fields it can resolve, each
    counted once per item of the lists above it), and the nested arguments (below the root
    fields, whose own arguments their resolvers check) that are out of bounds."""
    operation = get_operation_ast(document, operation_name)
    root = schema.get_root_type(operation.operation) if operation is not None else None
    coerced = (
        get_variable_values(schema, operation.variable_definitions or (), variables)
        if operation is not None
        else []
    )
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    walker = _Walker(schema, fragments, coerced)
    # invalid variables or no such operation: execution reports them
    if operation is not None and root is not None and not isinstance(coerced, list):
        walker.cost = walker.walk(operation.selection_set, root, 1, depth=0)
    return walker


class _Walker:
    def __init__(self, schema: GraphQLSchema, fragments: dict[str, Any], variables: Any) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.cost = 0
        self.problems: list[str] = []

    def walk(
        self, selections: SelectionSetNode, parent: GraphQLNamedType, times: int, depth: int
    ) -> int:
        total = 0
        for sel in selections.selections:
            if isinstance(sel, FieldNode):
                total += times + self._field(sel, parent, times, depth)
            elif isinstance(sel, InlineFragmentNode):
                target = self._type(sel.type_condition.name.value) if sel.type_condition else parent
                total += self.walk(sel.selection_set, target or parent, times, depth)
            elif isinstance(sel, FragmentSpreadNode):
                fragment = self.fragments.get(sel.name.value)
                if fragment is not None:
                    target = self._type(fragment.type_condition.name.value)
                    total += self.walk(fragment.selection_set, target or parent, times, depth)
        return total

    def _type(self, name: str) -> GraphQLNamedType | None:
        return self.schema.get_type(name)

    def _field(self, node: FieldNode, parent: GraphQLNamedType, times: int, depth: int) -> int:
        if node.selection_set is None or node.name.value.startswith("__"):
            return 0
        if not (is_object_type(parent) or isinstance(parent, GraphQLInterfaceType)):
            return 0
        assert isinstance(parent, GraphQLObjectType | GraphQLInterfaceType)
        field = parent.fields.get(node.name.value)
        if field is None:
            return 0
        size = 1
        if field.args:
            try:
                args = get_argument_values(field, node, self.variables)
            except GraphQLError:  # execution reports it
                args = {}
            for name in SIZE_ARGUMENTS:
                if isinstance(args.get(name), int):
                    size = max(size, args[name])
            if depth > 0:
                self._check(node.name.value, args)
        return self.walk(node.selection_set, get_named_type(field.type), times * size, depth + 1)

    def _check(self, field: str, args: dict[str, Any]) -> None:
        for name, check in PAYLOAD_CHECKS.items():
            if args.get(name) is not None:
                try:
                    check(args[name])
                except InvalidInput as exc:
                    self.problems.append(f"{field}: {exc}")


class ParsedOnce(SchemaExtension):
    """Parse and validate each query text once, not once per request.

    A dashboard or a script sends the same few queries again and again; parsing and
    validating one (every rule of the schema walks it) cost as much as answering it from
    shared reads. Results are kept by text, for texts up to REUSE_MAX_CHARS, at most
    REUSE_ENTRIES of them: the rules never change while the server runs, and validation
    does not look at variables.
    """

    def on_parse(self) -> Iterator[None]:
        ctx = self.execution_context
        key = _reuse_key(ctx.query)
        if key is not None and (document := _PARSED.get(key)) is not None:
            ctx.graphql_document = document
        yield
        if key is not None and ctx.graphql_document is not None:
            _keep(_PARSED, key, ctx.graphql_document)

    def on_validate(self) -> Iterator[None]:
        ctx = self.execution_context
        key = _reuse_key(ctx.query)
        if key is not None and (errors := _VALIDATED.get(key)) is not None:
            ctx.pre_execution_errors = list(errors)
        yield
        if key is not None and ctx.pre_execution_errors is not None:
            _keep(_VALIDATED, key, list(ctx.pre_execution_errors))


REUSE_MAX_CHARS = 16_000
REUSE_ENTRIES = 512
_PARSED: OrderedDict[Hashable, Any] = OrderedDict()
_VALIDATED: OrderedDict[Hashable, list[GraphQLError]] = OrderedDict()


def _reuse_key(query: str | None) -> str | None:
    return query if query and len(query) <= REUSE_MAX_CHARS else None


def _keep(cache: OrderedDict[Hashable, Any], key: Hashable, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > REUSE_ENTRIES:
        cache.popitem(last=False)
