"""The docs stay true: the driver guide covers the whole contract and its code runs."""

from __future__ import annotations

import inspect
import re

from conftest import REPO

from lamina.core import hookspec
from lamina.core.driver import Driver

GUIDE = (REPO / "docs" / "writing-a-driver.md").read_text()


def public_driver_methods() -> list[str]:
    return [
        name for name, member in inspect.getmembers(Driver)
        if not name.startswith("_") and callable(member)
    ]


def test_every_hook_is_documented_in_the_guide() -> None:
    hooks = [n for n in dir(hookspec) if n.startswith("lamina_")]
    assert hooks
    missing = [h for h in hooks if f"`{h}(" not in GUIDE]
    assert not missing, f"hooks not documented in docs/writing-a-driver.md: {missing}"


def test_every_driver_method_is_documented_in_the_guide() -> None:
    missing = [m for m in public_driver_methods() if f"`{m}(" not in GUIDE]
    assert not missing, f"Driver methods not documented in docs/writing-a-driver.md: {missing}"


def test_every_driver_method_states_its_contract() -> None:
    undocumented = [m for m in public_driver_methods() if not inspect.getdoc(getattr(Driver, m))]
    assert not undocumented


def test_the_guides_complete_driver_is_the_tested_one() -> None:
    """The code at the end of the guide is the example package the tests install."""
    code = re.findall(r"```python\n(.*?)```", GUIDE, re.S)[-1]
    source = (REPO / "tests/plugins/lamina-dircopy/lamina_dircopy/__init__.py").read_text()

    def body(text: str) -> str:
        return text.split("from __future__ import annotations", 1)[1].strip()

    assert body(code) == body(source)
