"""The faces of glan: the CLI, the GraphQL app and its uvicorn entry."""
