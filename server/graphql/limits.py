"""Limits that turn abusive queries away before they reach the store.

Depth, alias and token limits come from strawberry. What they cannot see is size: two
nested `children(first: 500)` are shallow and short but ask for 250,000 nodes. `QueryCost`
estimates the nodes an operation can return, multiplying page sizes (`first`, `n`) down
the selection, and refuses the operation before anything runs when the estimate is over
the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationType,
    SelectionSetNode,
    get_named_type,
    get_operation_ast,
    is_object_type,
)
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.type import GraphQLInterfaceType, GraphQLNamedType, GraphQLObjectType
from strawberry.extensions import SchemaExtension

#: Arguments that say how many items a list field returns.
SIZE_ARGUMENTS = ("first", "n")


class QueryCost(SchemaExtension):
    def __init__(self, *, max_cost: int) -> None:
        self.max_cost = max_cost

    def on_execute(self) -> Iterator[None]:
        ctx = self.execution_context
        document = ctx.graphql_document
        if document is not None and ctx.operation_type != OperationType.SUBSCRIPTION:
            cost = estimate_cost(
                ctx.schema._schema, document, ctx.operation_name, ctx.variables or {}
            )
            if cost > self.max_cost:
                message = (
                    f"query too large: it could return about {cost:,} items, over the limit of "
                    f"{self.max_cost:,}; ask for smaller pages (first/n) or fewer nested lists"
                )
                # a result set here means strawberry does not execute the operation
                ctx.result = GraphQLExecutionResult(data=None, errors=[GraphQLError(message)])
        yield


def estimate_cost(
    schema: GraphQLSchema, document: Any, operation_name: str | None, variables: dict[str, Any]
) -> int:
    """Fields the operation can resolve, each counted once per item of the lists above it."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return 0
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0
    coerced = get_variable_values(schema, operation.variable_definitions or (), variables)
    if isinstance(coerced, list):  # invalid variables: execution reports them
        return 0
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    walker = _Walker(schema, fragments, coerced)
    return walker.cost(operation.selection_set, root, 1)


class _Walker:
    def __init__(self, schema: GraphQLSchema, fragments: dict[str, Any], variables: Any) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables

    def cost(self, selections: SelectionSetNode, parent: GraphQLNamedType, times: int) -> int:
        total = 0
        for sel in selections.selections:
            if isinstance(sel, FieldNode):
                total += times + self._field(sel, parent, times)
            elif isinstance(sel, InlineFragmentNode):
                target = self._type(sel.type_condition.name.value) if sel.type_condition else parent
                total += self.cost(sel.selection_set, target or parent, times)
            elif isinstance(sel, FragmentSpreadNode):
                fragment = self.fragments.get(sel.name.value)
                if fragment is not None:
                    target = self._type(fragment.type_condition.name.value)
                    total += self.cost(fragment.selection_set, target or parent, times)
        return total

    def _type(self, name: str) -> GraphQLNamedType | None:
        return self.schema.get_type(name)

    def _field(self, node: FieldNode, parent: GraphQLNamedType, times: int) -> int:
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
        return self.cost(node.selection_set, get_named_type(field.type), times * size)
