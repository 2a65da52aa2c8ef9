"""Reading PostgreSQL's ``EXPLAIN (FORMAT JSON)`` plans in tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A plan node (``plan[0]["Plan"]`` of the JSON) and every node under it."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scans(plan: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Relation -> the scans of it in the plan's nodes (a bitmap scan counted once)."""
    found: dict[str, list[str]] = {}
    for node in plan:
        if "Relation Name" in node and node["Node Type"] != "ModifyTable":
            found.setdefault(node["Relation Name"], []).append(node["Node Type"])
    return found
