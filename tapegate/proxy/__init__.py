"""The protocol-neutral, sans-IO session core: admission (and, next, the session layer)."""
