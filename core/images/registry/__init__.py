"""A client of the OCI distribution API: manifests, blobs, uploads, authentication.

:mod:`.client` (:class:`Registry`, :class:`Manifest`, :class:`BlobStream`) on
:mod:`.transport` (HTTP: scheme, retries, redirects, timeouts), :mod:`.auth`
(challenges, Basic, Bearer tokens) and :mod:`.credentials` (the auth files).
Importing this package is cheap: the HTTP connections (and :mod:`ssl`, for https
origins) are imported on the first request.
"""

from .client import BlobStream, Manifest, Registry
from .credentials import Credentials

__all__ = ["BlobStream", "Credentials", "Manifest", "Registry"]
