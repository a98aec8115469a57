"""The `glan` command line: the same store and pipeline as the API, from a terminal.

A module per group of commands: taxonomy, generate, datasets, serve, batch, model, over
common (the app, settings, and how a command reaches the store).
"""

from __future__ import annotations

import importlib

from .common import app

# each module registers its commands on the app as it is imported: in this order, which is
# the order `glan --help` lists them in
for _group in ("taxonomy", "generate", "datasets", "serve", "batch", "model"):
    importlib.import_module(f"{__name__}.{_group}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
