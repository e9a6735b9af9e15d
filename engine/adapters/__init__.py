"""engine/adapters."""
