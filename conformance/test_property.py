"""Case 44: random layer sequences give the same trees and diffs on the driver as on vfs.

Marked ``lamina_property`` so a matrix can leave it out (``-m "not
lamina_property"``) and run it on its own with its own example count.
Settings come from the environment:

``LAMINA_PROPERTY_EXAMPLES``
    examples per run (default 50; CI: 200 on the machine's own filesystem,
    25 on every other one);
``LAMINA_PROPERTY_DERANDOMIZE``
    ``1`` draws the same examples on every run (for CI without flakes).

A failure prints the shrunk plan (``Draw 1 (plan): [...]``): the fewest
layers and operations that still make the driver differ from vfs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.conformance.property import SideBySide, plans

pytestmark = pytest.mark.lamina_property

EXAMPLES = int(os.environ.get("LAMINA_PROPERTY_EXAMPLES", "50"))
DERANDOMIZE = os.environ.get("LAMINA_PROPERTY_DERANDOMIZE", "") not in ("", "0")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_44_same_as_vfs(lamina_suite, tmp_path_factory, data) -> None:
    """The driver's trees and exported diffs equal vfs's after every layer of the plan."""
    assert lamina_suite.root is not None
    caps = lamina_suite.driver_class.capabilities
    plan = data.draw(plans(links_survive_copy_up=caps.hardlinks_survive_copy_up,
                           setgid_inherits=caps.setgid_dirs_inherit_group), label="plan")
    reference: Path = tmp_path_factory.mktemp("property-reference")
    pair = SideBySide(lamina_suite.driver_class, dict(lamina_suite.options),
                      lamina_suite.root, reference)
    try:
        pair.run(plan)
    finally:
        problems = pair.close()
    assert not problems, "cleaning up after the plan:\n  " + "\n  ".join(problems)
