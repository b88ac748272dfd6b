"""A client of the OCI distribution API: manifests, blobs, uploads, authentication."""
