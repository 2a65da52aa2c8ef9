"""The documents keep saying what the code does: one knob table, complete, with the
code's defaults (docs/runbook.md, section 3), and no second copy of it elsewhere.
Read from the files: no database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cowrieprocessor.backfill.knobs import INT_KNOBS, KNOB_NAMES, BackfillKnobs

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"
KNOB_TABLE_HEADER = re.compile(r"^\|\s*knob\s*\|\s*default\s*\|", re.MULTILINE)
ROW = re.compile(r"^\|\s*`(?P<name>[a-z_]+)`\s*\|\s*(?P<default>[^|]*?)\s*\|", re.MULTILINE)


def _documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def knob_table(text: str) -> dict[str, str]:
    """name -> default of the Markdown table under a ``| knob | default |`` header."""
    match = KNOB_TABLE_HEADER.search(text)
    assert match is not None, "no `| knob | default |` table"
    lines = text[match.start() :].splitlines()[2:]  # past the header and its rule
    table = "\n".join(line for line in _until_blank(lines))
    rows = [(m["name"], m["default"]) for m in ROW.finditer(table)]
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"a knob is listed twice: {names}"
    return dict(rows)


def _until_blank(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.startswith("|"):
            break
        out.append(line)
    return out


def expected_defaults() -> dict[str, str]:
    """Each knob's default as an operator writes it (as ``status`` shows it)."""
    knobs = BackfillKnobs()
    shown = knobs.describe()
    shown["status_file"] = "none" if knobs.status_file is None else str(knobs.status_file)
    shown["join_back"] = knobs.join_back
    return shown


def test_expected_defaults_cover_every_knob() -> None:
    assert set(expected_defaults()) == KNOB_NAMES
    assert {k.name for k in INT_KNOBS} <= KNOB_NAMES


def test_the_runbooks_knob_table_lists_every_knob_of_the_code() -> None:
    listed = knob_table(RUNBOOK.read_text(encoding="utf-8"))
    assert sorted(listed) == sorted(KNOB_NAMES)


def test_the_runbooks_knob_table_gives_the_codes_defaults() -> None:
    listed = knob_table(RUNBOOK.read_text(encoding="utf-8"))
    assert {name: listed[name] for name in sorted(listed)} == {
        name: value for name, value in sorted(expected_defaults().items())
    }


@pytest.mark.parametrize("path", _documents(), ids=lambda p: p.name)
def test_no_other_document_keeps_a_knob_table_of_its_own(path: Path) -> None:
    if path == RUNBOOK:
        assert len(KNOB_TABLE_HEADER.findall(path.read_text(encoding="utf-8"))) == 1
        return
    assert not KNOB_TABLE_HEADER.search(path.read_text(encoding="utf-8")), (
        "the knob table lives in docs/runbook.md only: link to it"
    )


def test_the_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```", 2)[1]
    assert "make demo" in first_block and "make test" in first_block


def test_the_readme_points_to_the_knob_table() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/runbook.md" in text and "backfill --help" in text
