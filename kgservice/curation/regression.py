"""The clinical regression cases: data-driven cases with the answer each must get.

They live as JSON under ``tests/data/`` (a wheel carries them in the package): the public
vignettes (``vignettes/*.json``, whole cases) and the rule cases (``rules/*.json``, overlays
on the base case ``base-case.json``; ``rules/README.md`` says how to write one). The
test suite and ``kgservice impact`` read them through this module, so that both build the
same cases and judge answers by the same expectations.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

#: What an ``expect`` object may state; anything else is a typo in a case file.
EXPECT_KEYS = frozenset({"category", "pathways", "pathways_include", "pathways_exclude", "pain_sources",
                         "failure_causes", "red_flags", "urgency", "response", "because", "reasons"})


@dataclass(frozen=True)
class RegressionCase:
    name: str
    origin: str  # the file, relative to the regression folder
    case: dict[str, Any]  # a whole contract case
    expect: dict[str, Any]


def regression_dir() -> Path:
    """The shipped regression cases: bundled in a wheel, else the repository's ``tests/data``."""
    bundled = Path(str(resources.files("kgservice"))) / "_data" / "regression"
    return bundled if bundled.is_dir() else Path(__file__).resolve().parents[2] / "tests" / "data"


def regression_cases(root: Path | None = None) -> list[RegressionCase]:
    """Every vignette and rule case under ``root`` (default: :func:`regression_dir`)."""
    root = root or regression_dir()
    found = []
    for path in sorted((root / "vignettes").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        found.append(RegressionCase(data["name"], f"vignettes/{path.name}", data["case"], data["expect"]))
    base = base_case(root)
    for path in sorted((root / "rules").glob("*.json")):
        for n, entry in enumerate(json.loads(path.read_text(encoding="utf-8"))["cases"]):
            case = build_case(entry["case"], base)
            if case["id"] == base["id"]:  # an id of its own, so that cases can be reasoned together
                case["id"] = f"rule-{path.stem[:40]}-{n}"
            found.append(RegressionCase(entry["name"], f"rules/{path.name}", case, entry["expect"]))
    return found


@cache
def _base_case(root: Path) -> dict[str, Any]:
    return json.loads((root / "base-case.json").read_text(encoding="utf-8"))["case"]  # type: ignore


def base_case(root: Path | None = None) -> dict[str, Any]:
    """A fresh copy of the base case that rule cases overlay."""
    return copy.deepcopy(_base_case(root or regression_dir()))


def day(base: dict[str, Any], n: int) -> str:
    """The ISO date ``n`` days after the base case's injection.

    >>> day({"injection": {"date": "2026-06-10"}}, 14)
    '2026-06-24'
    """
    return (dt.date.fromisoformat(base["injection"]["date"]) + dt.timedelta(days=n)).isoformat()


def build_case(overlay: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract case of an overlay: its fields replace the base case's; ``scores`` are
    ``[day, score]`` pairs and a block's ``day`` counts, like them, from the injection."""
    case = copy.deepcopy(base) if base is not None else base_case()
    fields = copy.deepcopy(overlay)
    if (blocks := fields.pop("diagnostic_blocks", None)) is not None:
        fields["diagnostic_blocks"] = [
            {"target": b["target"], "date": day(case, b["day"]) if "day" in b else b["date"],
             "relief_percent": b["relief_percent"]} for b in blocks]
    if (scores := fields.pop("scores", None)) is not None:
        fields["pain_scores"] = [{"date": day(case, d), "score": s} for d, s in scores]
    case.update(fields)
    return case


def unmet(answer: dict[str, Any], expect: dict[str, Any]) -> list[str]:
    """What of ``expect`` the answer does not give, in words (empty: all of it holds)."""
    misses: list[str] = []
    pathways = _codes(answer["pathways"])
    if "category" in expect and answer["response"]["category"] != expect["category"]:
        misses.append(f"category: expected {expect['category']}, got {answer['response']['category']}")
    if "pathways" in expect and pathways != expect["pathways"]:
        misses.append(f"pathways: expected {expect['pathways']}, got {pathways}")
    misses += [f"pathway {c} not offered" for c in expect.get("pathways_include", []) if c not in pathways]
    misses += [f"pathway {c} offered" for c in expect.get("pathways_exclude", []) if c in pathways]
    for key in ("pain_sources", "failure_causes"):
        if key in expect and sorted(_codes(answer[key])) != sorted(expect[key]):
            misses.append(f"{key}: expected {sorted(expect[key])}, got {sorted(_codes(answer[key]))}")
    if "red_flags" in expect and _codes(answer["red_flags"]) != expect["red_flags"]:
        misses.append(f"red_flags: expected {expect['red_flags']}, got {_codes(answer['red_flags'])}")
    urgency = {p["code"]: p["urgency"] for p in answer["pathways"]}
    misses += [f"urgency of {code}: expected {level}, got {urgency.get(code)}"
               for code, level in expect.get("urgency", {}).items() if urgency.get(code) != level]
    for key, value in expect.get("response", {}).items():
        got = answer["response"][key]
        if got is None or abs(got - value) > 0.005:
            misses.append(f"response.{key}: expected {value}, got {got}")
    for what, exact in expect.get("reasons", {}).items():
        if (said := _reasons_of(answer, what)) != exact:
            misses.append(f"{what}: reasons expected {exact}, got {said}")
    for what, parts in expect.get("because", {}).items():
        reasons = _reasons_of(answer, what)
        misses += [f"{what}: no reason says {part!r}" for part in parts
                   if not any(part in reason for reason in reasons)]
    misses += [f"{key}: not an expectation this checker knows" for key in sorted(set(expect) - EXPECT_KEYS)]
    return misses


def _codes(items: list[dict[str, Any]]) -> list[str]:
    return [item["code"] for item in items]


def _reasons_of(answer: dict[str, Any], what: str) -> list[str]:
    if what == "response":
        return answer["response"].get("because") or []  # type: ignore[no-any-return]
    for key in ("pathways", "failure_causes", "pain_sources"):
        for item in answer[key]:
            if item["code"] == what:
                return item["because"]  # type: ignore[no-any-return]
    return []
