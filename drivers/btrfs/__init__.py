"""The btrfs driver (work in progress: not registered yet)."""
