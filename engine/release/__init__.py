"""engine/release."""
