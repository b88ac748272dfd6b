"""Deliberately broken storage drivers: each one is vfs with exactly one bug.

They exist to prove that the conformance suite has teeth (tests/test_mutants.py
runs the suite against each one and checks that a named case fails) and that
the property test finds real differences (tests/test_property_vfs.py). Select
one with ``--lamina-driver mutants.drivers:<Class>`` and this directory's
parent (``tests/``) on ``PYTHONPATH``.
"""

from __future__ import annotations

from .drivers import MUTANTS

__all__ = ["MUTANTS"]
