"""Containers: an image's layers plus one writable layer, and the record of what runs there."""
