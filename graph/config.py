"""What the store needs to open a database. Built by the server's Settings, never from env here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field, SecretStr


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("glan")) / "store.lbug"


class StoreConfig(BaseModel):
    backend: Literal["embedded", "bolt"] = "embedded"
    db_path: Path = Field(default_factory=default_db_path)
    read_only: bool = False
    #: memory the embedded engine may cache pages in (None: the engine's default, most of
    #: the machine's memory)
    buffer_pool_mb: int | None = None
    bolt_uri: str = "bolt://localhost:7687"
    bolt_user: str | None = "neo4j"
    bolt_password: SecretStr | None = None
    bolt_database: str | None = None
    #: neo4j | memgraph | arcadedb | auto (read from the server's agent string)
    bolt_flavor: Literal["auto", "neo4j", "memgraph", "arcadedb"] = "auto"
