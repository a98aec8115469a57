"""The GraphQL API, one module per type; `schema` is what the ASGI app serves."""

from .schema import schema

__all__ = ["schema"]
