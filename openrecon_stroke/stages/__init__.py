"""Pipeline stages, one module per concern."""
