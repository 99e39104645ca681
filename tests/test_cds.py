"""CDS Hooks 2.0 against the real server: a spec-following CDS client, and the JWT rules attacked.

The client does what an EHR does: discovery, then a ``patient-view`` call with the prefetch
the discovery response asks for (each public vignette expressed as FHIR R4, see
``fhircase.py``), then feedback on a card, each call with a fresh JWT signed by its own
ES384 key and registered with ``kgservice cds-client add``. Cards are checked against the
answer ``POST /pathway`` gives for the same case in the contract's JSON.
"""

from __future__ import annotations

import copy
import json
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhircase import answer_template, bundle, concept, hook_request, prefetch
from rdflib import Graph
from serverutil import RealServer, Reply, create_token, http_request

ROOT = Path(__file__).resolve().parent.parent
VIGNETTES = sorted((Path(__file__).parent / "data" / "vignettes").glob("*.json"))
SERVICE = "/cds-services/esi-failure-pathway"
ISS = "https://ehr.example.org/"
FHIR_JSON = "application/fhir+json"


class CdsClient:
    """Signs each call with a fresh short-lived JWT, as CDS Hooks asks of a CDS client."""

    def __init__(self, base_url: str, iss: str = ISS, kid: str = "ehr-key-1") -> None:
        self.base_url, self.iss, self.kid = base_url, iss, kid
        self.key = ec.generate_private_key(ec.SECP384R1())

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "ES384"}]}

    def token(self, path: str, **changes: Any) -> str:
        now = int(time.time())
        claims = {"iss": self.iss, "aud": self.base_url + path, "exp": now + 120, "iat": now,
                  "jti": str(uuid.uuid4()), "tenant": "north-hospital"}
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT"})

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Reply:
        return http_request(self.base_url, method, path, body, token=token or self.token(path))


def register(data_dir: Path, client: CdsClient, site: str, tmp: Path) -> None:
    jwks = tmp / f"jwks-{client.kid}.json"
    jwks.write_text(json.dumps(client.jwks()))
    done = subprocess.run([sys.executable, "-m", "kgservice.cli", "cds-client", "add", client.iss, "--jwks",
                           str(jwks), "--site", site, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("cds-data")
    with RealServer(data) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RealServer, tmp_path_factory: pytest.TempPathFactory) -> CdsClient:
    ehr = CdsClient(server.base_url)
    register(server.data_dir, ehr, "north", tmp_path_factory.mktemp("keys"))
    return ehr


@pytest.fixture(scope="module")
def token(server: RealServer) -> str:
    return create_token(server.data_dir, "north", "pathway:run")


@pytest.fixture(scope="module")
def ontology() -> Graph:
    return Graph().parse(ROOT / "ontology" / "esi.ttl")


def vignette(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["case"]


# -- the client flow ---------------------------------------------------------------------------


def test_discovery_lists_the_service_with_its_prefetch_templates(client: CdsClient) -> None:
    reply = client.call("GET", "/cds-services")
    assert reply.status == 200
    (svc,) = reply.json()["services"]
    assert (svc["id"], svc["hook"]) == ("esi-failure-pathway", "patient-view")
    assert svc["title"] and svc["description"]
    assert set(svc["prefetch"]) == {"patient", "conditions", "procedures", "observations"}
    assert svc["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert all("{{context.patientId}}" in t for t in svc["prefetch"].values())
    # the pain scores by their LOINC code, which the ontology holds as a SKOS match
    assert "code=http://loinc.org|72514-3," in svc["prefetch"]["observations"]


@pytest.mark.parametrize("path", VIGNETTES, ids=[p.stem for p in VIGNETTES])
def test_a_vignette_as_fhir_gets_the_cards_of_its_pathway_answer(path: Path, client: CdsClient, token: str,
                                                                  ontology: Graph, server: RealServer) -> None:
    case = vignette(path)
    external = VIGNETTES.index(path) % 2 == 0  # half through SNOMED/HPO/MONDO codes, half through ESI's own
    templates = client.call("GET", "/cds-services").json()["services"][0]["prefetch"]
    data = prefetch(case, ontology, external)
    held = [e["resource"] for e in bundle(data)["entry"]]  # what the EHR's FHIR server holds
    sent = hook_request({k: answer_template(t, held) for k, t in templates.items()}, f"pat-{case['id']}",
                        str(uuid.uuid4()))
    reply = client.call("POST", SERVICE, sent)
    assert reply.status == 200, reply.body
    cards = reply.json()["cards"]

    answer = http_request(server.base_url, "POST", "/pathway", case, token=token).json()
    as_fhir = http_request(server.base_url, "POST", "/pathway", json.dumps(bundle(data)).encode(), token=token,
                           headers={"Content-Type": FHIR_JSON}).json()
    assert as_fhir.pop("fhir") == {"unknown_codes": [], "notes": []}
    assert as_fhir == answer  # the same case read from FHIR gets the same answer

    docs = f"{server.base_url}/docs#"
    urgent = [p for p in answer["pathways"] if p["urgency"] == "urgent" and p["code"].endswith("consultation")]
    assert [c["indicator"] for c in cards[:-1]] == ["critical"] * len(urgent)
    for card, pathway in zip(cards, urgent, strict=False):
        assert pathway["label"] in card["summary"]
        (suggestion,) = card["suggestions"]
        request = ServiceRequest.model_validate(suggestion["actions"][0]["resource"])
        assert (request.code.coding[0].code, request.priority) == (pathway["code"], "urgent")
        assert request.subject.reference == f"Patient/pat-{case['id']}"
    summary = cards[-1]
    non_responder = answer["response"]["category"].endswith("non-responder")
    assert summary["indicator"] == ("warning" if non_responder else "info")
    rule = answer["response"]["rule"]
    assert summary["source"]["url"] == docs + rule["iri"].rsplit("#", 1)[1]
    assert answer["response"]["rule"]["source"] in summary["detail"]
    listed = [p for p in answer["pathways"] if p not in urgent]
    positions = [summary["detail"].index(f"**{p['label']}**") for p in listed]
    assert positions == sorted(positions)  # the order of care is kept
    for p in listed:
        assert docs + p["rule"]["iri"].rsplit("#", 1)[1] in summary["detail"]
    for card in cards:
        assert len(card["summary"]) < 140 and card["uuid"]
        for s in card.get("suggestions", []):
            ServiceRequest.model_validate(s["actions"][0]["resource"])

    chosen = next((c for c in cards if c.get("suggestions")), cards[-1])
    outcome = ({"outcome": "accepted", "acceptedSuggestions": [{"id": chosen["suggestions"][0]["uuid"]}]}
               if chosen.get("suggestions") else {"outcome": "overridden"})
    feedback = {"feedback": [{"card": chosen["uuid"], "outcomeTimestamp": "2026-12-01T10:00:00Z", **outcome}]}
    assert client.call("POST", SERVICE + "/feedback", feedback).status == 200
    audit = [json.loads(line) for line in (server.data_dir / "audit.jsonl").read_text().splitlines()]
    (recorded,) = [a for a in audit if any(f["card"] == chosen["uuid"] for f in a.get("feedback", []))]
    assert (recorded["cds_client"], recorded["site"], recorded["outcome"]) == (ISS, "north", 200)
    assert any(a.get("hook_instance") == sent["hookInstance"] and a.get("case") == case["id"] for a in audit)


# -- what a CDS client can get wrong ---------------------------------------------------------------


def hook(case_path: Path, ontology: Graph, **prefetch_changes: Any) -> dict[str, Any]:
    case = vignette(case_path)
    data = {**prefetch(case, ontology), **prefetch_changes}
    return hook_request({k: v for k, v in data.items() if v != "omit"}, f"pat-{case['id']}", str(uuid.uuid4()))


def test_missing_prefetch_is_412_and_nothing_is_fetched(client: CdsClient, ontology: Graph) -> None:
    sent = hook(VIGNETTES[0], ontology, observations="omit")
    reply = client.call("POST", SERVICE, sent)
    assert reply.status == 412 and reply.json()["missing"] == ["observations"]
    sent["fhirServer"] = "https://ehr.example.org/fhir"
    reply = client.call("POST", SERVICE, sent)
    assert reply.status == 412 and "does not query fhirServer" in reply.json()["detail"]


def test_null_prefetch_means_no_data_and_the_card_says_what_is_missing(client: CdsClient, ontology: Graph) -> None:
    reply = client.call("POST", SERVICE, hook(VIGNETTES[0], ontology, procedures=None))
    assert reply.status == 200
    (card,) = reply.json()["cards"]
    assert card["indicator"] == "info" and "cannot assess" in card["summary"]
    assert "epidural steroid injection" in card["detail"]


def test_invalid_fhir_is_422_with_where(client: CdsClient, ontology: Graph) -> None:
    sent = hook(VIGNETTES[0], ontology)
    sent["prefetch"]["observations"]["entry"][0]["resource"]["valueInteger"] = "eight"
    reply = client.call("POST", SERVICE, sent)
    assert reply.status == 422
    assert reply.json()["issues"][0]["location"].startswith("prefetch.observations.entry[0].resource.valueInteger")
    sent = hook(VIGNETTES[0], ontology)
    sent["prefetch"]["conditions"]["entry"][0]["resource"]["subject"] = {"reference": "Patient/someone-else"}
    assert client.call("POST", SERVICE, sent).status == 422
    sent = hook(VIGNETTES[0], ontology)
    sent["prefetch"]["patient"]["contained"] = [{"resourceType": "NoSuchType"}]  # fhir.resources raises KeyError
    assert client.call("POST", SERVICE, sent).status == 422
    not_json = http_request(client.base_url, "POST", SERVICE, b"{", token=client.token(SERVICE),
                            headers={"Content-Type": "application/json"})
    assert not_json.status == 400


def test_an_unknown_code_is_reported_not_dropped(client: CdsClient, ontology: Graph, token: str) -> None:
    sent = hook(VIGNETTES[0], ontology)
    odd = {"system": "http://snomed.info/sct", "code": "1234567", "display": "something ESI-KG does not know"}
    sent["prefetch"]["conditions"]["entry"].append({"resource": {
        "resourceType": "Condition", "id": "odd", "code": {"coding": [odd]},
        "subject": {"reference": sent["prefetch"]["conditions"]["entry"][0]["resource"]["subject"]["reference"]}}})
    cards = client.call("POST", SERVICE, sent).json()["cards"]
    assert "1234567" in cards[-1]["detail"] and "Not used" in cards[-1]["detail"]
    body = bundle({k: sent["prefetch"][k] for k in ("patient", "conditions", "procedures", "observations")})
    answer = http_request(client.base_url, "POST", "/pathway", json.dumps(body).encode(), token=token,
                          headers={"Content-Type": FHIR_JSON}).json()
    (unknown,) = answer["fhir"]["unknown_codes"]
    assert unknown["resource"] == "Condition/odd" and unknown["codings"][0]["code"] == "1234567"


# -- JWT rules --------------------------------------------------------------------------------------


def test_jwt_failures_are_each_refused(client: CdsClient, server: RealServer, ontology: Graph,
                                       tmp_path: Path) -> None:
    sent = hook(VIGNETTES[0], ontology)
    stranger = CdsClient(server.base_url, iss="https://rogue.example.org/")
    impostor = CdsClient(server.base_url, kid=client.kid)  # same iss and kid, another private key
    replayed = client.token(SERVICE)
    assert client.call("POST", SERVICE, sent, token=replayed).status == 200
    bad = {
        "no token": "",
        "wrong iss": stranger.token(SERVICE),
        "wrong aud": client.token(SERVICE, aud=server.base_url + "/cds-services"),
        "expired": client.token(SERVICE, exp=int(time.time()) - 120, iat=int(time.time()) - 240),
        "too long-lived": client.token(SERVICE, exp=int(time.time()) + 86_400),
        "replayed jti": replayed,
        "bad signature": impostor.token(SERVICE),
        "alg none": jwt.encode({"iss": ISS, "aud": server.base_url + SERVICE, "exp": int(time.time()) + 60,
                                "iat": int(time.time()), "jti": str(uuid.uuid4())}, None, algorithm="none",
                               headers={"kid": client.kid}),
        "HMAC": jwt.encode({"iss": ISS, "aud": server.base_url + SERVICE, "exp": int(time.time()) + 60,
                            "iat": int(time.time()), "jti": str(uuid.uuid4())}, "a shared secret of 32 bytes or more",
                           algorithm="HS256", headers={"kid": client.kid}),
        "no jti": client.token(SERVICE, jti=None),
        "unregistered jku": jwt.encode({"iss": ISS, "aud": server.base_url + SERVICE, "exp": int(time.time()) + 60,
                                        "iat": int(time.time()), "jti": str(uuid.uuid4())}, client.key,
                                       algorithm="ES384",
                                       headers={"kid": client.kid, "jku": "https://rogue.example.org/jwks"}),
    }
    for why, token in bad.items():
        reply = http_request(server.base_url, "POST", SERVICE, sent, headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 401, f"{why}: {reply.status} {reply.body!r}"
        assert reply.header("Content-Type") == "application/problem+json"
    audit = (server.data_dir / "audit.jsonl").read_text()
    assert audit.count('"outcome": 401') >= len(bad)


def test_a_removed_client_is_refused_at_once(server: RealServer, ontology: Graph, tmp_path: Path) -> None:
    other = CdsClient(server.base_url, iss="https://clinic.example.org/", kid="clinic-1")
    register(server.data_dir, other, "south", tmp_path)
    assert other.call("GET", "/cds-services").status == 200
    done = subprocess.run([sys.executable, "-m", "kgservice.cli", "cds-client", "remove", other.iss, "--data-dir",
                           str(server.data_dir)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert other.call("GET", "/cds-services").status == 401


def test_a_contract_violation_in_fhir_names_its_resource(client: CdsClient, ontology: Graph, token: str) -> None:
    sent = hook(VIGNETTES[0], ontology)
    scores = [e["resource"] for e in sent["prefetch"]["observations"]["entry"] if e["resource"]["id"] == "s1"]
    scores[0]["valueInteger"] = 11  # valid FHIR, but not a 0-10 rating
    (card,) = client.call("POST", SERVICE, sent).json()["cards"]
    assert "cannot assess" in card["summary"] and "Observation/s1" in card["detail"]
    body = bundle({k: sent["prefetch"][k] for k in ("patient", "conditions", "procedures", "observations")})
    reply = http_request(client.base_url, "POST", "/pathway", json.dumps(body).encode(), token=token,
                         headers={"Content-Type": FHIR_JSON})
    assert reply.status == 422
    (violation,) = reply.json()["violations"]
    assert (violation["path"], violation["source"]) == ("pain_scores[1].score", "Observation/s1")


MUTANTS = [None, 0, -1, 1.5, "", "x", "2026-13-40", "2026", [], {}, [1], {"a": 1}, True, "Patient/other", 10**30,
           "\ud800", {"resourceType": None}, {"resourceType": "NoSuchType"}]


def mutated(value: Any, rng: random.Random) -> Any:
    """``value`` with one to three elements replaced by wrong values or removed."""
    value = copy.deepcopy(value)
    for _ in range(rng.randint(1, 3)):
        parent = value
        while isinstance(parent, dict | list) and parent:
            key = rng.choice(list(parent) if isinstance(parent, dict) else range(len(parent)))
            child = parent[key]
            if isinstance(child, dict | list) and child and rng.random() < 0.7:
                parent = child
                continue
            if isinstance(parent, dict) and rng.random() < 0.3:
                del parent[key]
            else:
                parent[key] = copy.deepcopy(rng.choice(MUTANTS))
            break
    return value


def test_broken_fhir_is_never_a_500(client: CdsClient, ontology: Graph, token: str) -> None:
    rng = random.Random(12)
    sent = [hook(path, ontology) for path in VIGNETTES]
    statuses = []
    for _ in range(150):
        request = mutated(rng.choice(sent), rng)
        body = json.dumps(request).encode("utf-8", "surrogatepass")
        if rng.random() < 0.5:
            reply = http_request(client.base_url, "POST", SERVICE, body, token=client.token(SERVICE),
                                 headers={"Content-Type": "application/json"})
        else:
            prefetched = request.get("prefetch") if isinstance(request.get("prefetch"), dict) else {}
            as_bundle = mutated(bundle(sent[0]["prefetch"]), rng) if len(prefetched) < 4 else {
                "resourceType": "Bundle", "type": "collection",
                "entry": [{"resource": v} for v in prefetched.values()]}
            reply = http_request(client.base_url, "POST", "/pathway", json.dumps(as_bundle).encode(), token=token,
                                 headers={"Content-Type": FHIR_JSON})
        assert reply.status < 500, reply.body
        if reply.status >= 400:
            assert reply.header("Content-Type") == "application/problem+json"
        statuses.append(reply.status)
    assert {200, 422} <= set(statuses)  # the mutants reach both the answers and the validation


def test_the_readme_examples_answer(client: CdsClient, token: str) -> None:
    sent = json.loads((ROOT / "examples" / "cds-hook-red-flag-foot-drop.json").read_text())
    cards = client.call("POST", SERVICE, sent).json()["cards"]
    assert [c["indicator"] for c in cards] == ["critical", "warning"]
    body = (ROOT / "examples" / "fhir-red-flag-foot-drop.json").read_bytes()
    answer = http_request(client.base_url, "POST", "/pathway", body, token=token,
                          headers={"Content-Type": FHIR_JSON}).json()
    expected = json.loads((ROOT / "examples" / "red-flag-foot-drop.json").read_text())
    direct = http_request(client.base_url, "POST", "/pathway", expected, token=token).json()
    assert answer["pathways"] == direct["pathways"] and answer["fhir"]["unknown_codes"] == []


def test_a_finding_sent_as_an_observation_is_read(client: CdsClient, ontology: Graph, token: str) -> None:
    case = vignette(VIGNETTES[0])
    assert "structural-severity" not in {c["code"] for c in http_request(
        client.base_url, "POST", "/pathway", case, token=token).json()["failure_causes"]}
    body = bundle(prefetch(case, ontology))
    body["entry"].append({"resource": {"resourceType": "Observation", "id": "mri", "status": "final",
                                       "subject": {"reference": f"Patient/pat-{case['id']}"},
                                       "code": concept("bone-spurs", ontology, external=False)}})
    answer = http_request(client.base_url, "POST", "/pathway", json.dumps(body).encode(), token=token,
                          headers={"Content-Type": FHIR_JSON}).json()
    assert "structural-severity" in {c["code"] for c in answer["failure_causes"]}


def test_card_links_land_on_their_documentation_entry(client: CdsClient, ontology: Graph, token: str) -> None:
    docs = http_request(client.base_url, "GET", "/docs", token=token)
    if docs.status == 404:
        pytest.skip("GET /docs is not on this build: the anchors are checked when it is")
    assert docs.status == 200
    page = docs.body.decode()
    red_flag = next(p for p in VIGNETTES if "foot-drop" in p.name)
    cards = client.call("POST", SERVICE, hook(red_flag, ontology)).json()["cards"]
    urls = [c["source"]["url"] for c in cards] + [link["url"] for c in cards for link in c.get("links", [])]
    urls += re.findall(r"\]\((http[^)]+)\)", "".join(c["detail"] for c in cards))
    for url in urls:
        anchor = url.partition("#")[2]
        assert anchor and (f'id="{anchor}"' in page), url
