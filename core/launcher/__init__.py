"""The launcher: a container's process in its own namespaces, the same for every driver."""
