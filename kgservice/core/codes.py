"""Which contract code a FHIR coding stands for, read from the ontology.

A coding names an IRI (:func:`coding_iri`); the IRI stands for a contract code when it is the
term itself (the ontology's own code system, codes = the contract's codes) or a concept the
term links with ``skos:exactMatch`` or ``skos:closeMatch`` (exact wins). A curator adds a
mapping in Turtle; nothing here names a clinical code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rdflib import URIRef
from rdflib.namespace import SKOS

from .ontology import ESI

ESI_SYSTEM = "https://w3id.org/esi-kg/ontology"
#: How a FHIR code system's concepts are named as IRIs: system → IRI stem (``:`` in an OBO
#: code becomes ``_``). SNOMED CT and LOINC as FHIR's RDF names them; OBO ontologies by PURL.
IRI_STEMS: dict[str, str] = {
    "http://snomed.info/sct": "http://snomed.info/id/",
    "http://loinc.org": "http://loinc.org/rdf#",
    "http://human-phenotype-ontology.org": "http://purl.obolibrary.org/obo/",
    "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl": "http://purl.obolibrary.org/obo/NCIT_",
}
OBO = "http://purl.obolibrary.org/obo/"
_MATCHES = ((SKOS.exactMatch, 1), (SKOS.closeMatch, 2))  # relatedMatch is too loose to read a case by


def coding_iri(system: str | None, code: str | None) -> URIRef | None:
    """The IRI a FHIR coding stands for, or None for a system ESI-KG cannot name.

    >>> str(coding_iri("http://snomed.info/sct", "76107001"))
    'http://snomed.info/id/76107001'
    >>> str(coding_iri("http://human-phenotype-ontology.org", "HP:0009027"))
    'http://purl.obolibrary.org/obo/HP_0009027'
    >>> str(coding_iri("https://w3id.org/esi-kg/ontology", "foot-drop"))
    'https://w3id.org/esi-kg/ontology#foot-drop'
    """
    if not system or not code:
        return None
    if system.rstrip("#") == ESI_SYSTEM:
        return ESI[code]
    if system in IRI_STEMS:
        stem = IRI_STEMS[system]
        return URIRef(stem + (code.replace(":", "_") if stem == OBO else code))
    if system.startswith(OBO) and system.endswith(".owl") and ":" in code:  # MONDO, UBERON, MAXO, DOID…
        return URIRef(OBO + code.replace(":", "_"))
    return None


def iri_coding(iri: str) -> tuple[str, str] | None:
    """The FHIR (system, code) naming an IRI: the inverse of :func:`coding_iri`.

    >>> iri_coding("http://purl.obolibrary.org/obo/HP_0009027")
    ('http://human-phenotype-ontology.org', 'HP:0009027')
    >>> iri_coding("http://purl.obolibrary.org/obo/MONDO_0005965")
    ('http://purl.obolibrary.org/obo/mondo.owl', 'MONDO:0005965')
    >>> iri_coding("http://loinc.org/rdf#72514-3")
    ('http://loinc.org', '72514-3')
    """
    if iri.startswith(str(ESI)):
        return ESI_SYSTEM, iri[len(str(ESI)):]
    for system, stem in IRI_STEMS.items():
        if iri.startswith(stem) and stem != OBO:
            return system, iri[len(stem):]
    prefix, _, number = iri.removeprefix(OBO).partition("_")
    if not iri.startswith(OBO) or not number:
        return None
    if prefix == "HP":
        return "http://human-phenotype-ontology.org", f"HP:{number}"
    return f"{OBO}{prefix.lower()}.owl", f"{prefix}:{number}"


@dataclass(frozen=True)
class CodeMap:
    """Which contract code each IRI stands for, per contract field, from the ontology."""

    by_field: dict[str, dict[URIRef, tuple[tuple[int, str], ...]]]
    names: dict[URIRef, frozenset[URIRef]]  # an ontology term → every IRI that names it
    surgeries: frozenset[URIRef]  # spinal operations: one before the injection is prior spinal surgery

    @classmethod
    def from_kb(cls, kb: Any) -> CodeMap:
        graph = kb.ontology.graph
        names: dict[URIRef, set[URIRef]] = {}
        for s in set(graph.subjects()):
            if isinstance(s, URIRef):
                names[s] = {s} | {o for p, _ in _MATCHES for o in graph.objects(s, p) if isinstance(o, URIRef)}
        by_field: dict[str, dict[URIRef, list[tuple[int, str]]]] = {}
        for name, entries in kb.vocabulary["input"].items():
            table = by_field.setdefault(name, {})
            for entry in entries:
                term = URIRef(entry["iri"])
                table.setdefault(term, []).append((0, entry["code"]))
                for p, rank in _MATCHES:
                    for other in graph.objects(term, p):
                        table.setdefault(URIRef(str(other)), []).append((rank, entry["code"]))
        return cls({f: {i: tuple(sorted(c)) for i, c in t.items()} for f, t in by_field.items()},
                   {s: frozenset(n) for s, n in names.items()},
                   frozenset(kb.ontology.members(ESI.SurgicalProcedure)))

    def match(self, codings: Iterable[Any], fields: Iterable[str]) -> tuple[str, str] | None:
        """The (field, code) of the best match of any coding, or None. Exact beats close."""
        best: tuple[int, str, str] | None = None
        for coding in codings:
            iri = coding_iri(coding.system, coding.code)
            for name in fields:
                for rank, code in self.by_field.get(name, {}).get(iri, ()) if iri is not None else ():
                    if best is None or rank < best[0]:
                        best = (rank, name, code)
        return (best[1], best[2]) if best else None

    def tokens(self, term: URIRef) -> list[str]:
        """Every ``system|code`` search token that names ``term`` (for a FHIR search by code)."""
        found = (iri_coding(str(iri)) for iri in sorted(self.names.get(term, frozenset({term}))))
        return [f"{system}|{code}" for system, code in (f for f in found if f)]

    def names_term(self, codings: Iterable[Any], term: URIRef) -> bool:
        wanted = self.names.get(term, frozenset({term}))
        return any(coding_iri(c.system, c.code) in wanted for c in codings)
