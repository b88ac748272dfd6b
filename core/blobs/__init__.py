"""Blobs: content-addressed files (``sha256:<hex>``), written atomically and verified."""
