"""engine/adapters/haproxy."""
