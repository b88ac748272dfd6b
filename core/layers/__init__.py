"""Layers: the store that owns ids, the parent graph, life cycle and counted mounts; its
SQLite metadata; and the generic changes a driver gets unless it has native ones."""
