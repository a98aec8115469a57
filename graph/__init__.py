"""The glan knowledge store: the GLAN graph model, one driver interface, two backends."""
