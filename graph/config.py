"""What the store needs to open a database. Built by the server's Settings, never from env here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field, SecretStr

#: The embedded engine's page cache, in MB, unless GLAN_DB_BUFFER_MB says otherwise. It holds
#: the pages the engine reads and the working memory of its joins. The engine's own
#: default is about 80% of the machine's memory, which it keeps once filled: a server left
#: running, or one process writing a GLAN-scale store, grew to 8.5 GB. A fixed size, not a
#: share of memory: what a read needs depends on the store, not on the machine.
DEFAULT_BUFFER_POOL_MB = 512


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("glan")) / "store.lbug"


class StoreConfig(BaseModel):
    backend: Literal["embedded", "bolt"] = "embedded"
    db_path: Path = Field(default_factory=default_db_path)
    read_only: bool = False
    #: memory the embedded engine may cache pages and hold query state in, in MB; 0: the
    #: engine's own default, about 80% of the machine's memory
    buffer_pool_mb: int = Field(default=DEFAULT_BUFFER_POOL_MB, ge=0)
    #: connections the embedded engine reads on beside its writer's, at most (0: reads
    #: wait for writes, on the writer's connection)
    readers: int = Field(default=4, ge=0, le=64)
    bolt_uri: str = "bolt://localhost:7687"
    bolt_user: str | None = "neo4j"
    bolt_password: SecretStr | None = None
    bolt_database: str | None = None
    #: neo4j | memgraph | arcadedb | auto (read from the server's agent string)
    bolt_flavor: Literal["auto", "neo4j", "memgraph", "arcadedb"] = "auto"
