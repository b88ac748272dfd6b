"""The lamina conformance suite: the cases every storage driver must pass.

Shipped as a pytest plugin (:mod:`lamina.conformance.plugin`, entry point
``pytest11: lamina-conformance``) with its cases inside this package, so it
runs for any installed driver::

    pytest --pyargs lamina.conformance --lamina-driver NAME --lamina-root DIR
    lamina conformance --driver NAME

:mod:`~lamina.conformance.scenarios` builds layer steps that apply both to a
plain reference directory and through a store; :mod:`~lamina.conformance.trees`
compares trees; :mod:`~lamina.conformance.requirements` turns capabilities
into skips with reasons. See docs/conformance.md.

A driver's own tests call it: ``lamina.conformance.run(driver, root, ...)``
returns a :class:`SuiteResult` with every case's outcome
(:mod:`lamina.conformance.suite`).
"""

from .suite import CaseResult, SuiteResult, run

__all__ = ["CaseResult", "SuiteResult", "run"]
