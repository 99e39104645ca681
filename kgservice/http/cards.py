"""CDS Hooks cards from an ESI-KG answer.

At most two cards, because a clinician opening a chart reads the first line of a few cards,
and the EHR sorts cards by ``indicator``, not by ESI-KG's order of care:

- a ``critical`` card for a pathway of the highest urgency with an urgency of its own (the
  urgent spine surgeon consultation for a red flag): on its own, so that the EHR shows it
  first and never folds it behind "more details", with one suggestion, the referral;
- a summary card: how the case responded, then every other pathway in the order of care,
  each with its *why*, its rule and the article section. ``warning`` for a non-responder,
  ``info`` otherwise. One card keeps the pathways in their order, which separate cards
  would lose, and keeps the chart free of a card per step.

A card's ``source`` links the rule that decided it in ``/docs``; each pathway's rule is
linked in the Markdown ``detail``. Suggestions propose a draft ``ServiceRequest`` for each
pathway that is ordered as such: a pathway whose urgency follows another (an operation
after a consultation, ``esi:urgencyFollows``) is discussed at that consultation, not ordered.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from rdflib import URIRef

from ..core.codes import ESI_SYSTEM
from ..core.ontology import ESI, local_name

SUMMARY_MAX = 139  # CDS Hooks: a summary of fewer than 140 characters
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")  # what GFM reads as markup inside a line
#: FHIR's request-priority codes; an ESI urgency with the same code sets ServiceRequest.priority.
FHIR_PRIORITIES = ("routine", "urgent", "asap", "stat")


def md(text: Any) -> str:
    """Text made literal in GitHub-flavoured Markdown (codes and displays may come from the EHR).

    >>> print(md("a *b* [c](d) <i>"))
    a \\*b\\* \\[c\\](d) \\<i\\>
    """
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


class CardBuilder:
    def __init__(self, kb: Any, base_url: str) -> None:
        onto = kb.ontology
        self.onto = onto
        self.docs = f"{base_url}/docs"
        self.non_responses = {onto.term(i).code for i in onto.members(ESI.NonResponseCategory)}
        ranks = onto.urgency_rank
        top = max(ranks.values(), default=0)
        self.top_urgencies = {onto.term(u).code for u, r in ranks.items() if r == top}
        self.follows = {onto.term(p).code for p, info in onto.pathways.items() if info.urgency_follows is not None}

    # -- cards -----------------------------------------------------------------------------

    def cards(self, answer: dict[str, Any], patient_id: str, fhir_report: dict[str, Any]) -> list[dict[str, Any]]:
        pathways = answer.get("pathways", [])
        urgent = [p for p in pathways if p["urgency"] in self.top_urgencies and p["code"] not in self.follows]
        rest = [p for p in pathways if p not in urgent]
        out = [self._urgent_card(p, answer, patient_id, rest) for p in urgent]
        out.append(self._summary_card(answer, rest, patient_id, fhir_report))
        return out

    def _urgent_card(self, pathway: dict[str, Any], answer: dict[str, Any], patient_id: str,
                     rest: list[dict[str, Any]]) -> dict[str, Any]:
        flags = ", ".join(f["label"] for f in answer.get("red_flags", [])) or "see details"
        lines = [f"**{md(pathway['label'])}** ({md(pathway['urgency'])})", "", "Why:"]
        lines += [f"- {md(b)}" for b in pathway["because"]]
        lines += ["", self._rule_line(pathway["rule"])]
        discussed = [p for p in rest if p["code"] in self.follows and p["urgency"] in self.top_urgencies]
        if discussed:
            lines += ["", "To discuss at that consultation: " + ", ".join(md(p["label"]) for p in discussed) + "."]
        return {
            "uuid": str(uuid.uuid4()),
            "summary": short(f"Red flag ({flags}): {pathway['label']}"),
            "detail": "\n".join(lines),
            "indicator": "critical",
            "source": self._source(pathway["rule"]),
            "selectionBehavior": "at-most-one",
            "suggestions": [self._suggestion(pathway, patient_id, recommended=True)],
            "links": [self._link(pathway)],
        }

    def _summary_card(self, answer: dict[str, Any], pathways: list[dict[str, Any]], patient_id: str,
                      fhir_report: dict[str, Any]) -> dict[str, Any]:
        response = answer["response"]
        category = response["category"]
        label = self.onto.term(ESI[category]).label
        days = response.get("days_since_injection")
        steps = pathways
        head = f"{label[:1].upper()}{label[1:]}" + (f" on day {days} after the injection" if days is not None else "")
        why = response["because"][0] if response["because"] else "no next step from ESI-KG"
        summary = f"{head}: next, {steps[0]['label']}" if steps else f"{head}: {why}"
        lines = [f"**Response: {md(label)}**", ""]
        lines += [f"- {md(b)}" for b in response["because"]]
        lines += ["", self._rule_line(response["rule"])]
        if steps:
            lines += ["", "**Next steps, in order of care**", ""]
            for i, p in enumerate(steps, 1):
                why = "; ".join(md(b) for b in p["because"])
                lines.append(f"{i}. **{md(p['label'])}** ({md(p['urgency'])}): {why}. {self._rule_line(p['rule'])}")
        for key, title in (("failure_causes", "Likely causes of the failure"),
                           ("pain_sources", "Suspected pain sources")):
            if answer.get(key):
                lines += ["", f"**{title}:** " + "; ".join(
                    f"{md(c['label'])} ({'; '.join(md(b) for b in c['because'])})" for c in answer[key])]
        lines += self._unknown_lines(fhir_report)
        orderable = [p for p in steps if p["code"] not in self.follows]
        card: dict[str, Any] = {
            "uuid": str(uuid.uuid4()),
            "summary": short(summary),
            "detail": "\n".join(lines),
            "indicator": "warning" if category in self.non_responses else "info",
            "source": self._source(response["rule"]),
        }
        if orderable:
            card["selectionBehavior"] = "any"
            card["suggestions"] = [self._suggestion(p, patient_id) for p in orderable]
            card["links"] = [self._link(p) for p in steps]
        return card

    def unassessable_card(self, problems: list[dict[str, Any]], fhir_report: dict[str, Any]) -> dict[str, Any]:
        """A card saying why the record cannot be assessed yet (what is missing or out of range)."""
        first = problems[0]["message"] if problems else "the record is incomplete"
        lines = ["ESI-KG needs these before it can assess the injection:", ""]
        lines += [f"- {md(p.get('source') or p.get('location') or p.get('path') or 'the record')}: "
                  f"{md(p['message'])}" for p in problems]
        lines += self._unknown_lines(fhir_report)
        return {
            "uuid": str(uuid.uuid4()),
            "summary": short(f"ESI-KG cannot assess this injection yet: {first}"),
            "detail": "\n".join(lines),
            "indicator": "info",
            "source": {"label": "ESI-KG: what a case needs", "url": self.docs},
        }

    # -- parts -------------------------------------------------------------------------------

    def _rule_line(self, rule: dict[str, str]) -> str:
        return (f"Rule: [{md(rule['label'])}]({self.docs}#{local_name(URIRef(rule['iri']))}); "
                f"article section: *{md(rule['source'])}*")

    def _source(self, rule: dict[str, str]) -> dict[str, Any]:
        return {"label": f"ESI-KG: {rule['label']}", "url": f"{self.docs}#{local_name(URIRef(rule['iri']))}",
                "topic": {"system": ESI_SYSTEM, "code": local_name(URIRef(rule["iri"])), "display": rule["label"]}}

    def _link(self, pathway: dict[str, Any]) -> dict[str, str]:
        return {"label": f"About {pathway['label']}", "url": f"{self.docs}#{pathway['code']}", "type": "absolute"}

    def _suggestion(self, pathway: dict[str, Any], patient_id: str, recommended: bool = False) -> dict[str, Any]:
        request: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "code": {"coding": [{"system": ESI_SYSTEM, "code": pathway["code"], "display": pathway["label"]}],
                     "text": pathway["label"]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "reasonCode": [{"text": "; ".join(pathway["because"])}],
            "note": [{"text": f"Proposed by ESI-KG: {pathway['rule']['label']} ({pathway['rule']['source']})"}],
        }
        if pathway["urgency"] in FHIR_PRIORITIES:
            request["priority"] = pathway["urgency"]
        return {"label": f"Propose {pathway['label']}", "uuid": str(uuid.uuid4()), "isRecommended": recommended,
                "actions": [{"type": "create", "description": f"Draft a request for {pathway['label']}",
                             "resource": request}]}

    @staticmethod
    def _unknown_lines(fhir_report: dict[str, Any]) -> list[str]:
        unknown = fhir_report.get("unknown_codes", [])
        if not unknown:
            return []
        lines = ["", "**Not used** (codes ESI-KG does not know):", ""]
        for u in unknown:
            codes = ", ".join(f"{c.get('system', '')}|{c.get('code', '')}" + (f" ({c['display']})" if "display" in c
                              else "") for c in u["codings"]) or u.get("text") or "no coding"
            lines.append(f"- {md(u['resource'])} {md(u['element'])}: {md(codes)}")
        return lines
