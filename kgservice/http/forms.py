"""The clinician page's form: built from the case contract's JSON Schema and the vocabulary.

Every input is named by the JSON path of the value it holds (``age``, ``injection.date``,
``pain_scores[1].score``), so a 422's violation paths name the inputs they belong to, and a
posted form reads back into contract JSON by walking the same schema. The form knows no
field, code or range of its own: they come from ``openapi.case_schema`` and ``GET /vocabulary``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import MultiDict

from ..errors import Violation

_INTEGER = re.compile(r"^-?\d{1,9}$")
_NUMBER = re.compile(r"^-?\d{1,9}(\.\d{1,6})?$")
_ROW_KEY = re.compile(r"^(?P<name>[a-z_]+)\[(?P<index>\d{1,3})\]\.")
MAX_ROWS = 100
#: The page's wording where the field's name says too little (the contract's own descriptions
#: are written for API clients).
WORDING = {"id": ("Case id", "optional: left empty, the service assigns one")}


@dataclass
class Field:
    """One input, one group of inputs (an object) or one block of rows (a list of objects)."""

    name: str  # the JSON path, relative to the row for the fields of a row
    label: str
    kind: str  # integer, number, boolean, date, text, choice, choices, group, rows
    required: bool = False
    hint: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: list[dict[str, str]] = field(default_factory=list)
    children: list[Field] = field(default_factory=list)

    def child(self, name: str) -> Field:
        return next(c for c in self.children if c.name == name)


def label_of(name: str) -> str:
    """A field's name as the form shows it.

    >>> label_of("spinal_region")
    'Spinal region'
    """
    return name.replace("_", " ").capitalize()


def build(schema: dict[str, Any], vocabulary: dict[str, list[dict[str, str]]], prefix: str = "") -> list[Field]:
    """The form's fields, in the schema's order, for an object schema."""
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema["properties"].items():
        path = f"{prefix}{name}"
        fields.append(_field(name, path, prop, vocabulary, name in required))
    return fields


def _field(name: str, path: str, prop: dict[str, Any], vocabulary: dict[str, list[dict[str, str]]],
           required: bool) -> Field:
    label, hint = WORDING.get(path, (label_of(name), prop.get("description", "")))
    common = {"name": name, "label": label, "required": required, "hint": hint}
    kind = prop.get("type")
    if kind == "object":
        return Field(kind="group", children=build(prop, vocabulary, f"{path}."), **common)
    if kind == "array" and prop["items"].get("type") == "object":
        return Field(kind="rows", children=build(prop["items"], vocabulary, f"{path}."), **common)
    if kind == "array":
        return Field(kind="choices", choices=_choices(path, prop["items"], vocabulary), **common)
    if "enum" in prop:
        return Field(kind="choice", choices=_choices(path, prop, vocabulary), **common)
    if kind in ("integer", "number"):
        return Field(kind=kind, minimum=prop.get("minimum"), maximum=prop.get("maximum"), **common)
    if kind == "boolean":
        return Field(kind="boolean", **common)
    return Field(kind="date" if prop.get("format") == "date" else "text", **common)


def _choices(path: str, prop: dict[str, Any], vocabulary: dict[str, list[dict[str, str]]]) -> list[dict[str, str]]:
    """The vocabulary's entries for a coded field (row fields are listed as ``rows.field``)."""
    key = re.sub(r"\[\d+\]", "", path)
    entries = {e["code"]: e for e in vocabulary.get(key, [])}
    return [entries.get(code, {"code": code, "label": code, "definition": ""}) for code in prop["enum"]]


# -- posted form → contract JSON ----------------------------------------------------------------


def read(fields: list[Field], form: MultiDict[str, str], remove: str | None = None) -> dict[str, Any]:
    """The case a posted form describes. Empty inputs are left out, so that the contract's checks
    report what is missing; text where a number belongs is kept, so that they report it too.
    Unticked boxes and empty lists are left out: the contract's defaults.
    Rows left wholly empty are dropped; ``remove`` (``pain_scores[1]``) drops one more."""
    return _read_object(fields, form, "", remove)


def _read_object(fields: list[Field], form: MultiDict[str, str], prefix: str, remove: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        path = f"{prefix}{f.name}"
        if f.kind == "group":
            value: Any = _read_object(f.children, form, f"{path}.", remove) or None
        elif f.kind == "rows":
            value = [row for i in row_indices(form, path)
                     if f"{path}[{i}]" != remove and (row := _read_object(f.children, form, f"{path}[{i}].", None))]
        elif f.kind == "choices":
            value = [v for v in form.getlist(path) if v]
        elif f.kind == "boolean":
            value = form.get(path) == "true"
        else:
            value = _scalar(f.kind, form.get(path, "").strip())
        if not (value is None or value is False or value == "" or value == []):  # not `in`: 0 == False
            out[f.name] = value
    return out


def row_indices(form: MultiDict[str, str], name: str) -> list[int]:
    """The row numbers a form holds for the block ``name``, in order (at most ``MAX_ROWS``)."""
    found = {int(m["index"]) for key in form if (m := _ROW_KEY.match(key)) and m["name"] == name}
    return sorted(found)[:MAX_ROWS]


def _scalar(kind: str, raw: str) -> Any:
    if not raw:
        return None
    if kind == "integer" and _INTEGER.match(raw):
        return int(raw)
    if kind == "number" and _NUMBER.match(raw):
        number = float(raw)
        return int(number) if number.is_integer() else number
    return raw


# -- violations → inputs ------------------------------------------------------------------------


def errors_by_input(fields: list[Field], case: dict[str, Any],
                    violations: list[Violation]) -> tuple[dict[str, list[str]], list[Violation]]:
    """Each violation's message under the input (or group of inputs) its path names, and the
    violations that name none of them. ``pain_regions[1]`` belongs to the ``pain_regions`` group."""
    names = set(_input_names(fields, case, ""))
    shown: dict[str, list[str]] = {}
    elsewhere = []
    for v in violations:
        target = v.path if v.path in names else re.sub(r"\[\d+\]$", "", v.path)
        if target in names:
            shown.setdefault(target, []).append(v.message)
        else:
            elsewhere.append(v)
    return shown, elsewhere


def _input_names(fields: list[Field], values: dict[str, Any], prefix: str) -> list[str]:
    names = []
    for f in fields:
        path = f"{prefix}{f.name}"
        names.append(path)
        if f.kind == "group":
            names += _input_names(f.children, values.get(f.name) or {}, f"{path}.")
        elif f.kind == "rows":
            for i, row in enumerate(values.get(f.name) or [{}]):
                names.append(f"{path}[{i}]")
                names += _input_names(f.children, row if isinstance(row, dict) else {}, f"{path}[{i}].")
    return names


def spoken(fields: list[Field], path: str) -> str:
    """A violation's path as the form shows it: ``pain_scores[1].score`` → ``Pain scores, row 2: Score``."""
    words, here = [], fields
    for part in path.split("."):
        name, _, index = part.partition("[")
        found = next((f for f in here if f.name == name), None)
        if found is None:
            return path
        words.append(found.label + (f", row {int(index.rstrip(']')) + 1}" if index[:-1].isdigit() else ""))
        here = found.children
    return ": ".join(words)


def input_id(path: str) -> str:
    """An HTML id for the input named ``path``.

    >>> input_id("pain_scores[1].score")
    'f-pain_scores-1-score'
    """
    return "f-" + re.sub(r"[^A-Za-z0-9_]+", "-", path).strip("-")
