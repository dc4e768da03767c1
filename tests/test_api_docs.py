"""The API page documents every public name of the package."""

from __future__ import annotations

from pathlib import Path

import icl_lib as icl

API_PAGE = Path(__file__).resolve().parents[1] / "book" / "api.md"


def test_every_public_name_has_an_entry_on_the_api_page():
    page = API_PAGE.read_text(encoding="utf-8")
    modules = {"proofs", "plotting"}  # documented member by member under icl_lib.<module>
    missing = [name for name in icl.__all__ if name not in modules and f"icl_lib.{name}\n" not in page]
    assert not missing, f"add these to book/api.md: {missing}"


def test_every_public_name_exists():
    for name in icl.__all__:
        assert hasattr(icl, name), name


def test_every_member_of_the_documented_modules_has_an_entry():
    page = API_PAGE.read_text(encoding="utf-8")
    for module in (icl.proofs, icl.plotting):
        prefix = module.__name__
        missing = [name for name in module.__all__ if f"{prefix}.{name}\n" not in page]
        assert not missing, f"add these members of {prefix} to book/api.md: {missing}"
