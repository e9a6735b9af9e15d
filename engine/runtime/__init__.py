"""engine/runtime."""
