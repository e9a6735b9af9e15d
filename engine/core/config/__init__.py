"""engine/core/config."""
