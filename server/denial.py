"""The API's refusal of a change made without its token, in a module of its own: the server
sends it (server/auth.py) and the CLI's client of a server recognises it (server/remote.py)
without importing the server's GraphQL stack, which a command run on the store never needs."""

DENIED = (
    "this server needs `Authorization: Bearer <token>` (its GLAN_API_TOKEN) to change things; "
    'over websockets send it in the connection_init payload as {"Authorization": ...}'
)
