"""Who may change things through the API.

With GLAN_API_TOKEN set, mutations and subscriptions need `Authorization: Bearer <token>`:
over HTTP as a header, over websockets as that header or in the connection_init payload
(browsers cannot set headers on a websocket). Queries stay open, so a dashboard can read
coverage without holding the key that starts paid model calls.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from strawberry.permission import BasePermission

if TYPE_CHECKING:
    from strawberry.types import Info

    from .context import Context

from .denial import DENIED

SCHEME = "Bearer "


def offered_token(header: str | None, connection_params: Mapping[str, Any] | None) -> str | None:
    """The bearer token a client presented: the header first, then connection_init."""
    value: Any = header
    if not value and connection_params:
        value = connection_params.get("Authorization") or connection_params.get("authorization")
    if not isinstance(value, str) or not value.startswith(SCHEME):
        return None
    return value[len(SCHEME) :].strip() or None


def token_required(api_token: SecretStr | None) -> bool:
    return api_token is not None and bool(api_token.get_secret_value())


def authorized(api_token: SecretStr | None, offered: str | None) -> bool:
    """Whether a request may change things: always when no token is set; else the token
    must match, compared in constant time so its prefix cannot be guessed from timings."""
    if api_token is None or not token_required(api_token):
        return True
    if offered is None:
        return False
    return hmac.compare_digest(offered.encode(), api_token.get_secret_value().encode())


class IsAuthorized(BasePermission):
    """On every mutation and subscription field."""

    message = DENIED

    def has_permission(self, source: Any, info: Info[Context, None], **kwargs: Any) -> bool:
        return info.context.authorized
