"""The recipe and what reads it: the pydantic schema, the strict YAML loader, overrides, the registries,
user errors, the logger."""
