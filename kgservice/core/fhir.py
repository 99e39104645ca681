"""FHIR R4 resources → a contract case, validated with ``fhir.resources`` (its R4B models).

R4B changed only the medication-definition, evidence and subscription resources; Patient,
Condition, Procedure, Observation and Bundle are the same as in R4, so R4 resources are read
with the R4B models (``fhir.resources`` ships R5, R4B and STU3, no separate R4 package).

How a case is expressed in FHIR (the README's "FHIR" section says the same for integrators):

- ``Patient``: ``birthDate`` (a full date) and ``gender``. Age is computed, in whole years at
  the injection date; ``gender`` codes are the contract's ``sex`` codes.
- ``Condition`` (and ``Observation`` with a coded finding): its ``code`` becomes a diagnosis,
  a finding, a red flag or a pain region, by the value set the matched term belongs to.
  Refuted or entered-in-error conditions, and observations valued ``false``, are left out.
- ``Procedure`` coded ``EpiduralSteroidInjection``: the injection (the latest, if several),
  with its ``performed`` date, ``bodySite`` (spinal region) and the approach in the extension
  :data:`APPROACH_EXTENSION`. Other procedures are treatments tried; a spinal surgery
  before the injection sets ``prior_spinal_surgery``.
- A diagnostic block: a ``Procedure`` coded ``diagnostic-nerve-block`` with the joint as
  ``bodySite``, and an ``Observation`` coded ``DiagnosticBlockResult`` whose ``partOf``
  names that Procedure, valued in percent relief.
- Pain scores: ``Observation`` coded LOINC 72514-3 (0–10 numeric rating), ``effective``
  date, ``valueInteger`` (or a unitless ``valueQuantity``); ``bodySite`` adds a pain region.

Codes are matched through the ontology only (:mod:`codes`): its own code system and the SKOS
matches it holds to SNOMED CT, HPO, MONDO, NCIt, UBERON, MAxO, LOINC. A code that matches
nothing is reported, never dropped silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ..errors import ESIError, MalformedInput
from .cases import origin
from .codes import ESI_SYSTEM, CodeMap
from .ontology import ESI

FHIR_JSON = "application/fhir+json"
APPROACH_EXTENSION = "https://w3id.org/esi-kg/fhir/StructureDefinition/injection-approach"
#: The resource types a case is read from; others are validated and then left out (noted).
USED_TYPES = ("Patient", "Condition", "Procedure", "Observation")
_FINDING_FIELDS = ("diagnoses", "findings", "red_flags", "pain_regions")
_DROPPED_VERIFICATION = {"refuted", "entered-in-error"}
_DROPPED_STATUS = {"entered-in-error", "cancelled", "not-done"}


class InvalidFHIR(ESIError):
    """Readable JSON that is not valid FHIR R4, or resources that cannot be read as one patient."""

    status = 422
    type_slug = "invalid-fhir"
    title = "Invalid FHIR"

    def __init__(self, issues: list[dict[str, str]]) -> None:
        super().__init__(f"{len(issues)} problem(s) with the FHIR resources")
        self.issues = issues

    def problem(self) -> dict[str, Any]:
        return {**super().problem(), "issues": self.issues}


@dataclass
class Mapped:
    """A case read from FHIR, with what could not be used."""

    case: dict[str, Any]
    unknown_codes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)  # what keeps the case from being assessed
    sources: dict[str, str] = field(default_factory=dict)  # case JSON path → the resource it came from

    def report(self) -> dict[str, Any]:
        return {"unknown_codes": self.unknown_codes, "notes": self.notes}

    def resource_of(self, path: str) -> str | None:
        """The resource a case path (``pain_scores[1].score``) was read from, if known."""
        return origin(self.sources, path)


# -- reading and validating ----------------------------------------------------------------


def parse(data: Any, where: str = "$") -> list[Any]:
    """Validate a resource, a Bundle or a list of either; the resources in it, as models.

    A Bundle's entries are validated one by one, so that each problem is located in its entry.
    """
    if isinstance(data, list):
        return [r for i, item in enumerate(data) for r in parse(item, f"{where}[{i}]")]
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        return [_model(data, where)]
    entries = data.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidFHIR([{"location": f"{where}.entry", "message": "entry must be an array"}])
    shell = _model({**data, "entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                                      for e in entries]}, where)
    if shell.type not in ("searchset", "collection"):
        raise InvalidFHIR([{"location": f"{where}.type", "message": "a Bundle must be a searchset or a collection"}])
    out = []
    for i, (entry, raw) in enumerate(zip(shell.entry or (), entries, strict=True)):
        if "resource" in raw and not (entry.search and entry.search.mode == "outcome"):
            out += parse(raw["resource"], f"{where}.entry[{i}].resource")
    return out


def _model(data: Any, where: str) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise InvalidFHIR([{"location": where, "message": "expected a FHIR resource (an object with resourceType)"}])
    kind = data["resourceType"]
    try:
        model = get_fhir_model_class(kind)
    except (ValueError, KeyError):
        raise InvalidFHIR([{"location": f"{where}.resourceType",
                            "message": f"{kind!r} is not a FHIR R4 resource type"}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidFHIR([{"location": _location(where, err["loc"]), "message": err["msg"]}
                           for err in exc.errors()[:50]]) from None
    except (TypeError, KeyError, ValueError):
        # fhir.resources raises these, not a ValidationError, for some malformed nested resources
        # (a contained resource without a valid resourceType); they are input errors all the same.
        raise InvalidFHIR([{"location": where, "message": f"not a valid FHIR R4 {kind}: a nested resource or "
                            "element has a missing or unknown type"}]) from None


def read_bundle(data: Any) -> list[Any]:
    """A decoded ``application/fhir+json`` body: a Bundle (searchset or collection) of the patient's resources."""
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise MalformedInput("send a FHIR Bundle (searchset or collection) as application/fhir+json")
    return parse(data)


def _location(where: str, loc: tuple[Any, ...]) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# -- mapping ----------------------------------------------------------------------------------


def to_case(resources: Iterable[Any], codes: CodeMap) -> Mapped:
    """Map one patient's validated resources to a contract case."""
    by_type: dict[str, list[Any]] = {}
    for r in resources:
        by_type.setdefault(r.get_resource_type(), []).append(r)
    out = Mapped({})
    for kind in sorted(set(by_type) - set(USED_TYPES)):
        out.notes.append(f"{len(by_type[kind])} {kind} resource(s) not used")
    patients = {_ref(p) for p in by_type.get("Patient", [])}
    if len(patients) > 1:
        raise InvalidFHIR([{"location": "Patient", "message": "the resources are about more than one Patient"}])
    if not patients:
        out.problems.append({"location": "Patient", "message": "no Patient resource"})
    patient = by_type["Patient"][0] if patients else None
    _check_subjects(by_type, next(iter(patients), None))
    case = out.case
    findings = [r for r in by_type.get("Observation", []) if not _is(r, codes, "PainScoreObservation")
                and not _is(r, codes, "DiagnosticBlockResult")]
    for r in [*by_type.get("Condition", []), *findings]:
        _add_finding(r, codes, out)
    injection = _injection(by_type.get("Procedure", []), codes, out)
    _scores(by_type.get("Observation", []), codes, out)
    _procedures(by_type.get("Procedure", []), injection, by_type.get("Observation", []), codes, out)
    if patient is not None:
        out.sources.update({"sex": f"{_ref(patient)}.gender", "age": f"{_ref(patient)}.birthDate"})
        if patient.gender is not None:
            case["sex"] = patient.gender
        if injection is not None:
            born = patient.birthDate
            if isinstance(born, dt.date):
                at = dt.date.fromisoformat(case["injection"]["date"])
                case["age"] = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
            else:
                out.problems.append({"location": f"{_ref(patient)}.birthDate",
                                     "message": "a full birth date is needed to compute the age at the injection"})
    for name in (*_FINDING_FIELDS, "treatments_tried", "diagnostic_blocks", "pain_scores"):
        case.setdefault(name, [])
    case.setdefault("prior_spinal_surgery", False)
    return out


def _ref(resource: Any) -> str:
    return f"{resource.get_resource_type()}/{resource.id or '?'}"


def _check_subjects(by_type: dict[str, list[Any]], patient: str | None) -> None:
    if patient is None or patient.endswith("/?"):
        return
    wrong = [{"location": f"{_ref(r)}.subject", "message": f"refers to {r.subject.reference}, not {patient}"}
             for kind in USED_TYPES[1:] for r in by_type.get(kind, [])
             if r.subject is not None and r.subject.reference and r.subject.reference.startswith("Patient/")
             and r.subject.reference != patient]
    if wrong:
        raise InvalidFHIR(wrong)


def _is(resource: Any, codes: CodeMap, term: str) -> bool:
    return resource.code is not None and codes.names_term(resource.code.coding or (), ESI[term])


def _unknown(out: Mapped, resource: Any, element: str, concept: Any, wanted: str) -> None:
    codings = [{k: v for k, v in (("system", c.system), ("code", c.code), ("display", c.display)) if v}
               for c in (concept.coding or ())] if concept is not None else []
    out.unknown_codes.append({"resource": _ref(resource), "element": element, "codings": codings,
                              "text": getattr(concept, "text", None) or "",
                              "message": f"matches no {wanted} in the ontology (its own codes or SKOS matches)"})


def _date_of(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    start = getattr(value, "start", None)  # a Period
    return _date_of(start) if start is not None else None


def _add(out: Mapped, resource: Any, name: str, code: str) -> None:
    values = out.case.setdefault(name, [])
    if code not in values:
        out.sources[f"{name}[{len(values)}]"] = _ref(resource)
        values.append(code)


def _add_finding(r: Any, codes: CodeMap, out: Mapped) -> None:
    kind = r.get_resource_type()
    if kind == "Condition":
        status = r.verificationStatus.coding[0].code if r.verificationStatus and r.verificationStatus.coding else None
        if status in _DROPPED_VERIFICATION:
            out.notes.append(f"{_ref(r)} left out: verification status {status}")
            return
    elif r.status in _DROPPED_STATUS or r.valueBoolean is False:
        out.notes.append(f"{_ref(r)} left out: " + ("valued false" if r.valueBoolean is False else r.status))
        return
    found = codes.match(r.code.coding or (), _FINDING_FIELDS) if r.code else None
    if found is None:
        _unknown(out, r, "code", r.code, "diagnosis, finding, red flag or pain region")
    else:
        _add(out, r, *found)


def _injection(procedures: list[Any], codes: CodeMap, out: Mapped) -> Any:
    found = [(d, p) for p in procedures if p.status not in _DROPPED_STATUS and _is(p, codes, "EpiduralSteroidInjection")
             for d in [_date_of(p.performedDateTime or p.performedPeriod)]]
    undated = [p for d, p in found if d is None]
    for p in undated:
        out.problems.append({"location": f"{_ref(p)}.performed", "message": "the injection has no performed date"})
    dated = sorted(((d, p) for d, p in found if d is not None), key=lambda dp: dp[0])
    if not dated:
        if not undated:
            out.problems.append({"location": "Procedure", "message": "no epidural steroid injection Procedure "
                                 f"(code {ESI_SYSTEM}|EpiduralSteroidInjection)"})
        return None
    for d, p in dated[:-1]:
        out.notes.append(f"{_ref(p)}: an earlier injection ({d}); the case is about the latest one")
    day, p = dated[-1]
    injection: dict[str, Any] = {"date": day.isoformat()}
    for ext in p.extension or ():
        if ext.url == APPROACH_EXTENSION:
            concept = ext.valueCodeableConcept
            codings = concept.coding or () if concept else [ext.valueCoding] if ext.valueCoding else ()
            match = codes.match(codings, ("injection.approach",))
            if match:
                injection["approach"] = match[1]
            else:
                _unknown(out, p, "extension(injection-approach)", concept, "injection approach")
    for site in p.bodySite or ():
        match = codes.match(site.coding or (), ("injection.spinal_region",))
        if match:
            injection["spinal_region"] = match[1]
        else:
            _unknown(out, p, "bodySite", site, "spinal region")
    out.case["injection"] = injection
    out.sources["injection"] = _ref(p)
    if p.id:
        out.case["id"] = p.id
    return p


def _scores(observations: list[Any], codes: CodeMap, out: Mapped) -> None:
    scores = []
    for r in observations:
        if not _is(r, codes, "PainScoreObservation") or r.status in _DROPPED_STATUS:
            continue
        day = _date_of(r.effectiveDateTime or r.effectivePeriod or r.effectiveInstant)
        value = r.valueInteger if r.valueInteger is not None else (r.valueQuantity.value if r.valueQuantity else None)
        if day is None or value is None:
            out.problems.append({"location": _ref(r), "message": "a pain score needs an effective date and a value"})
            continue
        if isinstance(value, Decimal):
            value = int(value) if value == value.to_integral_value() else float(value)
        scores.append(({"date": day.isoformat(), "score": value}, _ref(r)))
        for site in r.bodySite and [r.bodySite] or ():
            match = codes.match(site.coding or (), ("pain_regions",))
            if match:
                _add(out, r, "pain_regions", match[1])
            else:
                _unknown(out, r, "bodySite", site, "pain region")
    scores.sort(key=lambda s: s[0]["date"])
    out.case["pain_scores"] = [score for score, _ in scores]
    out.sources.update({f"pain_scores[{i}]": ref for i, (_, ref) in enumerate(scores)})


def _procedures(procedures: list[Any], injection: Any, observations: list[Any], codes: CodeMap,
                out: Mapped) -> None:
    relief = {ref: r for r in observations if _is(r, codes, "DiagnosticBlockResult")
              for ref in (p.reference for p in r.partOf or ()) if ref}
    injected_on = dt.date.fromisoformat(out.case["injection"]["date"]) if "injection" in out.case else None
    for p in procedures:
        if p is injection or p.status in _DROPPED_STATUS or _is(p, codes, "EpiduralSteroidInjection"):
            continue
        day = _date_of(p.performedDateTime or p.performedPeriod)
        if p.code is not None and _prior_surgery(p, codes) and day and injected_on and day < injected_on:
            out.case["prior_spinal_surgery"] = True
            continue
        result = relief.pop(_ref(p), None)
        if result is not None:
            _block(p, day, result, codes, out)
            continue
        found = codes.match(p.code.coding or (), ("treatments_tried",)) if p.code else None
        if found is None:
            _unknown(out, p, "code", p.code, "treatment")
        else:
            _add(out, p, *found)
    for ref, r in relief.items():
        out.problems.append({"location": _ref(r), "message": f"block result is partOf {ref}, which is not in the data"})


def _prior_surgery(p: Any, codes: CodeMap) -> bool:
    return any(codes.names_term(p.code.coding or (), term) for term in codes.surgeries)


def _block(p: Any, day: dt.date | None, result: Any, codes: CodeMap, out: Mapped) -> None:
    target = next((m[1] for site in p.bodySite or ()
                   if (m := codes.match(site.coding or (), ("diagnostic_blocks.target",)))), None)
    value = result.valueQuantity.value if result.valueQuantity else result.valueInteger
    if target is None or day is None or value is None:
        out.problems.append({"location": _ref(p), "message": "a diagnostic block needs a bodySite naming the joint, "
                             "a performed date and a relief Observation valued in percent"})
        return
    if isinstance(value, Decimal):
        value = int(value) if value == value.to_integral_value() else float(value)
    blocks = out.case.setdefault("diagnostic_blocks", [])
    out.sources[f"diagnostic_blocks[{len(blocks)}]"] = _ref(p)
    out.sources[f"diagnostic_blocks[{len(blocks)}].relief_percent"] = _ref(result)
    blocks.append({"target": target, "date": day.isoformat(), "relief_percent": value})

