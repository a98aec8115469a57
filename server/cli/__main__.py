"""`python -m server.cli`: the `glan` command."""

from . import main

main()
