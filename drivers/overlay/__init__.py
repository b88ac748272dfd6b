"""The overlay driver (work in progress: not registered yet)."""
