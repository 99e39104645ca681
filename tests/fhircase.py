"""Test helper: a contract case expressed as FHIR R4, as an EHR would hold it.

``prefetch(case, ontology_graph)`` gives the four prefetch values of the CDS service
(``patient`` a Patient, the others searchset Bundles); ``bundle(...)`` a collection Bundle
for ``POST /pathway``. With ``external=True`` each code is sent as the ontology's preferred
external match (SNOMED CT, then HPO, MONDO, UBERON, MAxO) where it has an exact one, so the
SKOS mappings are exercised; otherwise, and for codes without one, the ontology's own system.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rdflib import Graph, URIRef
from rdflib.namespace import SKOS

from kgservice.core.codes import ESI_SYSTEM, iri_coding
from kgservice.core.fhir import APPROACH_EXTENSION

ESI = ESI_SYSTEM + "#"
LOINC_PAIN = {"system": "http://loinc.org", "code": "72514-3",
              "display": "Pain severity - 0-10 verbal numeric rating [Score] - Reported"}
#: External systems in order of preference.
PREFERRED = ("http://snomed.info/sct", "http://human-phenotype-ontology.org", "http://purl.obolibrary.org/obo/mondo.owl",
             "http://purl.obolibrary.org/obo/uberon.owl", "http://purl.obolibrary.org/obo/maxo.owl")


def coding(code: str, graph: Graph, external: bool = True) -> dict[str, str]:
    if external:
        found = [c for o in graph.objects(URIRef(ESI + code), SKOS.exactMatch) if (c := iri_coding(str(o)))]
        for system in PREFERRED:
            for sys_, value in sorted(found):
                if sys_ == system:
                    return {"system": system, "code": value, "display": code}
    return {"system": ESI_SYSTEM, "code": code, "display": code}


def concept(code: str, graph: Graph, external: bool = True) -> dict[str, Any]:
    return {"coding": [coding(code, graph, external)]}


def prefetch(case: dict[str, Any], graph: Graph, external: bool = True) -> dict[str, Any]:
    """The CDS prefetch for ``case``: Patient, and searchset Bundles of Conditions, Procedures, Observations."""
    pid = f"pat-{case['id']}"
    subject = {"reference": f"Patient/{pid}"}
    injected = dt.date.fromisoformat(case["injection"]["date"])
    born = dt.date(injected.year - case["age"], 1, 1)  # a birthday already passed in the injection's year
    patient = {"resourceType": "Patient", "id": pid, "birthDate": born.isoformat()}
    if "sex" in case:
        patient["gender"] = case["sex"]
    conditions = [{"resourceType": "Condition", "id": f"c{i}", "subject": subject,
                   "verificationStatus": {"coding": [{
                       "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                   "code": concept(code, graph, external)}
                  for i, code in enumerate([*case.get("diagnoses", []), *case.get("red_flags", [])])]
    conditions += [{"resourceType": "Condition", "id": f"f{i}", "subject": subject,
                    "code": concept(code, graph, external)} for i, code in enumerate(case.get("findings", []))]
    observations: list[dict[str, Any]] = []
    regions = list(case["pain_regions"])
    for i, score in enumerate(case["pain_scores"]):
        obs = {"resourceType": "Observation", "id": f"s{i}", "status": "final", "subject": subject,
               "code": {"coding": [LOINC_PAIN]}, "effectiveDateTime": score["date"], "valueInteger": score["score"]}
        if regions:
            obs["bodySite"] = concept(regions.pop(0), graph, external)
        observations.append(obs)
    conditions += [{"resourceType": "Condition", "id": f"r{i}", "subject": subject, "code": concept(r, graph, external)}
                   for i, r in enumerate(regions)]
    injection: dict[str, Any] = {
        "resourceType": "Procedure", "id": case["id"], "status": "completed", "subject": subject,
        "code": {"coding": [{"system": ESI_SYSTEM, "code": "EpiduralSteroidInjection"}],
                 "text": "epidural steroid injection"},
        "performedDateTime": case["injection"]["date"],
    }
    if "spinal_region" in case["injection"]:
        injection["bodySite"] = [concept(case["injection"]["spinal_region"], graph, external)]
    if "approach" in case["injection"]:
        injection["extension"] = [{"url": APPROACH_EXTENSION,
                                   "valueCodeableConcept": concept(case["injection"]["approach"], graph, external)}]
    procedures = [injection]
    if case.get("prior_spinal_surgery"):
        procedures.append({"resourceType": "Procedure", "id": "surgery", "status": "completed", "subject": subject,
                           "code": concept("discectomy", graph, external),
                           "performedDateTime": (injected - dt.timedelta(days=400)).isoformat()})
    later = (injected + dt.timedelta(days=1)).isoformat()
    procedures += [{"resourceType": "Procedure", "id": f"t{i}", "status": "completed", "subject": subject,
                    "code": concept(code, graph, external), "performedDateTime": later}
                   for i, code in enumerate(case.get("treatments_tried", []))]
    for i, block in enumerate(case.get("diagnostic_blocks", [])):
        procedures.append({"resourceType": "Procedure", "id": f"b{i}", "status": "completed", "subject": subject,
                           "code": concept("diagnostic-nerve-block", graph, external=False),
                           "bodySite": [concept(block["target"], graph, external)],
                           "performedDateTime": block["date"]})
        observations.append({"resourceType": "Observation", "id": f"br{i}", "status": "final", "subject": subject,
                             "code": {"coding": [{"system": ESI_SYSTEM, "code": "DiagnosticBlockResult"}]},
                             "partOf": [{"reference": f"Procedure/b{i}"}],
                             "valueQuantity": {"value": block["relief_percent"], "unit": "%",
                                               "system": "http://unitsofmeasure.org", "code": "%"}})
    return {"patient": patient, "conditions": searchset(conditions), "procedures": searchset(procedures),
            "observations": searchset(observations)}


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def bundle(prefetched: dict[str, Any]) -> dict[str, Any]:
    """One collection Bundle holding every resource of a prefetch (for ``POST /pathway``)."""
    resources = [prefetched["patient"]] + [e["resource"] for key in ("conditions", "procedures", "observations")
                                           for e in prefetched[key]["entry"]]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def answer_template(template: str, resources: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a FHIR server holding ``resources`` returns for one of ESI-KG's prefetch templates.

    Only what those templates use: a read (``Patient/{{context.patientId}}``), or a search by
    patient, optionally filtered by ``code=system|code,system|code``.
    """
    path, _, query = template.partition("?")
    kind = path.partition("/")[0]
    of_kind = [r for r in resources if r["resourceType"] == kind]
    if not query:
        return of_kind[0] if of_kind else None
    params = dict(part.split("=", 1) for part in query.split("&"))
    if "code" in params:
        wanted = {tuple(token.split("|", 1)) for token in params["code"].split(",")}
        of_kind = [r for r in of_kind
                   if any((c.get("system"), c.get("code")) in wanted for c in r.get("code", {}).get("coding", []))]
    return searchset(of_kind)


def hook_request(prefetched: dict[str, Any], patient_id: str, hook_instance: str) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": hook_instance,
            "context": {"userId": "Practitioner/example", "patientId": patient_id}, "prefetch": prefetched}
