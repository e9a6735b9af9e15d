"""engine/adapters/aws."""
