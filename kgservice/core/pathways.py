"""The contract's answer for one case, read by SPARQL from the case's asserted and inferred facts.

Works on anything that runs SELECTs (:class:`~kgservice.core.terms.Selects`): the graphs of a case
just reasoned, or a stored case's two graphs in its site's store.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import pyoxigraph as ox
from rdflib import URIRef

from .ontology import ESI, Ontology, Term
from .terms import Selects, Substitutions, from_ox

_CATEGORY = ESI.hasResponseCategory
_FACETS = {
    ESI.hasSuspectedPainSource: "pain_sources",
    ESI.hasSuspectedFailureCause: "failure_causes",
    ESI.hasApplicablePathway: "pathways",
}


def _query(name: str) -> str:
    return (resources.files("kgservice") / "sparql" / name).read_text(encoding="utf-8")


class AnswerBuilder:
    """Builds answers; holds only what the ontology says about pathways and labels."""

    def __init__(self, ontology: Ontology) -> None:
        self.ontology = ontology
        self._conclusions = _query("answer-conclusions.rq")
        self._observations = _query("answer-observations.rq")
        self._red_flags = _query("answer-red-flags.rq")

    def answer(self, facts: Selects, case: URIRef, case_id: str) -> dict[str, Any]:
        """The answer for ``case``, read from the graphs that hold its facts."""
        bind: Substitutions = {ox.Variable("case"): ox.NamedNode(str(case))}

        conclusions: dict[tuple[URIRef, URIRef], dict[str, Any]] = {}
        for row in facts.select(self._conclusions, bind):
            prop, value = URIRef(row["prop"].value), URIRef(row["value"].value)
            entry = conclusions.setdefault((prop, value), {"rule": None, "because": []})
            if row["rule"] is not None:
                entry["rule"] = URIRef(row["rule"].value)
            if row["because"] is not None and row["because"].value not in entry["because"]:
                entry["because"].append(row["because"].value)

        observed = next(iter(facts.select(self._observations, bind)), None)
        flags = self._flags(facts.select(self._red_flags, bind))

        category = next((v for (p, v) in conclusions if p == _CATEGORY), None)
        response: dict[str, Any] = {
            "category": self._code(category) if category is not None else None,
            "baseline_score": _number(observed, "baseline"),
            "best_relief_percent": _number(observed, "best"),
            "days_since_injection": _number(observed, "days"),
        }
        if category is not None:
            response.update(self._why(conclusions[(_CATEGORY, category)]))

        version = observed["version"].value if observed is not None and observed["version"] is not None else None
        answer: dict[str, Any] = {"case": case_id, "ontology_version": version or self.ontology.version,
                                  # a stored answer that another version reasoned: `kgservice reason --stale`
                                  "stale": version != self.ontology.version}
        if answer["stale"]:
            answer["current_ontology_version"] = self.ontology.version
        answer["response"] = response
        applicable = {v for (p, v) in conclusions if p == ESI.hasApplicablePathway}
        for prop, key in _FACETS.items():
            items = []
            for (p, value), entry in conclusions.items():
                if p != prop:
                    continue
                item: dict[str, Any] = {"code": self._code(value), "label": self.ontology.term(value).label}
                if prop == ESI.hasApplicablePathway:
                    item["urgency"] = self._urgency(value, applicable)
                item.update(self._why(entry))
                items.append((self._sort_key(prop, value), item))
            answer[key] = [item for _, item in sorted(items, key=lambda pair: pair[0])]
        answer["red_flags"] = flags
        return answer

    def _why(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The reasons in clinical order (``esi:explanationOrder``), and the rule."""
        rule: Term | None = self.ontology.term(entry["rule"]) if entry["rule"] is not None else None
        because = sorted(entry["because"], key=self.ontology.reason_key)
        return {"because": because, "rule": rule.ref() if rule else None}

    def _code(self, iri: URIRef) -> str:
        return self.ontology.term(iri).code

    def _sort_key(self, prop: URIRef, value: URIRef) -> tuple[int, str]:
        info = self.ontology.pathways.get(value) if prop == ESI.hasApplicablePathway else None
        return (info.order if info else 0, self._code(value))

    def _urgency(self, pathway: URIRef, applicable: set[URIRef]) -> str | None:
        info = self.ontology.pathways.get(pathway)
        if info is None:
            return None
        if info.urgency is not None:
            return self._code(info.urgency)
        inherited = self.ontology.inherited_urgency(pathway, applicable)
        return self._code(inherited[0]) if inherited is not None else None

    def _flags(self, rows: ox.QuerySolutions) -> list[dict[str, str]]:
        codes = {URIRef(row["type"].value) for row in rows if self.ontology.is_code(URIRef(row["type"].value))}
        return [{"code": self._code(c), "label": self.ontology.term(c).label}
                for c in sorted(codes, key=self._code)]


def _number(row: Any, name: str) -> int | float | None:
    if row is None or row[name] is None:
        return None
    value = from_ox(row[name]).toPython()
    as_float = float(value)
    return int(as_float) if as_float.is_integer() and "." not in str(row[name].value) else as_float
