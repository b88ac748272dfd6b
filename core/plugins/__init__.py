"""Plugins: the pluggy hooks, finding plugins through entry points, the driver registry,
choosing the driver, and the ``--trace`` observer."""
