"""Errors raised by glan. Each carries the context a user needs to fix the problem."""

from __future__ import annotations


class GlanError(Exception):
    """Root of every error glan raises on purpose."""


class InvalidInput(GlanError):
    """A value given by the caller is not acceptable; nothing was changed."""


class NodeNotFound(GlanError):
    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        shown = path if len(path) <= 300 else f"{path[:300]}..."
        msg = f"no node at path {shown!r}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg + " (see `glan tree` for what exists)")


class WrongKind(InvalidInput):
    def __init__(self, message: str, *, parent_kind: str | None = None, kind: str | None = None):
        self.parent_kind = parent_kind
        self.kind = kind
        super().__init__(message)


class CycleError(InvalidInput):
    """Linking a node under itself or one of its descendants."""


class ScopeNotApproved(InvalidInput):
    """Generation was asked to run under a node that is not approved."""

    def __init__(self, path: str, status: str) -> None:
        self.path = path
        self.status = status
        super().__init__(
            f"{path!r} is {status}: generation only runs under approved nodes. "
            f"Approve it first: glan review {path!r} --approve"
        )


class StoreLocked(GlanError):
    """The embedded database is open read-write in another process."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        super().__init__(
            f"the glan database at {path} is already open in another process"
            f"{' (' + detail + ')' if detail else ''}. Only one process may open it at a time: "
            "stop the other `glan` process (or `glan serve`, and use its GraphQL API while it "
            "runs), or use another GLAN_DB_PATH."
        )


class BackendUnavailable(GlanError):
    """The configured graph backend cannot be reached or started."""


class QueryError(GlanError):
    """The database rejected a query; carries the backend's message."""


class StoreMemoryExceeded(GlanError):
    """The embedded engine needed more memory than its page cache may hold.

    The cache is bounded (GLAN_DB_BUFFER_MB) so that a long-lived process stays bounded;
    a read or write that needs more is refused with this, naming the setting to raise,
    instead of taking the machine's memory or crashing.
    """

    def __init__(self, buffer_mb: int, doing: str = "", *, saved: bool = False) -> None:
        self.buffer_mb = buffer_mb
        #: the write was committed, and only the checkpoint after it ran out of memory
        self.saved = saved
        cap = f"GLAN_DB_BUFFER_MB={buffer_mb}" if buffer_mb else "its default size"
        outcome = (
            "after saving a change, which is kept" if saved else "so it stopped and changed nothing"
        )
        advice = (
            f"set GLAN_DB_BUFFER_MB higher (for example {2 * buffer_mb}) and start glan again"
            if buffer_mb
            else "free memory on this machine, or set GLAN_DB_BUFFER_MB below it"
        )
        super().__init__(
            f"the embedded database needed more memory {doing + ' ' if doing else ''}than its "
            f"page cache may hold ({cap}), {outcome}: {advice}"
        )


class StoreSetAside(GlanError):
    """The embedded engine refused a write for memory part-way, and its state in this
    process can no longer be trusted: closing the database then (its checkpoint at close)
    was seen to damage the file, writing a shadow file without bound until the disk was
    full. glan stops using the database and leaves it unclosed when the process ends; what
    was committed before is recovered when it is opened again."""

    def __init__(self, path: str, buffer_mb: int) -> None:
        cap = f"GLAN_DB_BUFFER_MB={buffer_mb}" if buffer_mb else "its page cache"
        raise_it = (
            f"set GLAN_DB_BUFFER_MB higher (for example {2 * buffer_mb})"
            if buffer_mb
            else "free memory on this machine"
        )
        super().__init__(
            f"the embedded database at {path} refused a write part-way for lack of memory "
            f"({cap}); to keep its file safe glan no longer uses it in this process and will "
            f"not close it: {raise_it} and start glan again (what was saved before is kept)"
        )
