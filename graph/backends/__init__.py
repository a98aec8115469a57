"""One module per engine. `open_driver` picks one from a StoreConfig."""

from __future__ import annotations

from ..config import StoreConfig
from ..driver import GraphDriver


def open_driver(config: StoreConfig) -> GraphDriver:
    """Open the configured backend (imported lazily: the embedded engine needs no server)."""
    if config.backend == "embedded":
        from .embedded import EmbeddedDriver

        return EmbeddedDriver(
            config.db_path,
            read_only=config.read_only,
            buffer_pool_mb=config.buffer_pool_mb,
            readers=config.readers,
        )
    from .bolt import BoltDriver

    return BoltDriver(
        config.bolt_uri,
        user=config.bolt_user,
        password=config.bolt_password.get_secret_value() if config.bolt_password else None,
        database=config.bolt_database,
        flavor=config.bolt_flavor,
    )
