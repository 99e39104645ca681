"""The CDS Hooks call over HTTP, beside ``POST /pathway``, against the real server with auth on.

Each generated case is sent three ways, one request at a time on one keep-alive connection:
``POST /pathway`` with the contract's JSON (a bearer token), ``POST /pathway`` with the same
case as a FHIR collection Bundle, and the ``patient-view`` call of ``esi-failure-pathway``
with a realistic prefetch: what a FHIR server holding the patient's chart returns for the
discovery's templates. The chart is the case's resources (``tests/fhircase.py``) plus 20
vital-sign Observations (left out by the template's code filter) and 5 Conditions and 5
Procedures with codes ESI-KG does not know (sent, validated and reported on the card). Every
CDS call carries a fresh ES384 JWT, signed before the clock starts; its verification and the
replay check are in the figure.
The three kinds run one after the other, so that the server's CPU time (all its processes)
per request can be told apart: on a busy machine latency follows the load, CPU much less.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from common import summary_ms, table
from cryptography.hazmat.primitives.asymmetric import ec
from ingest import generator, kb, root
from loadgen import Server, group_cpu_s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fhircase import answer_template, bundle, hook_request, prefetch  # noqa: E402

ISS = "https://ehr.bench.example/"
SERVICE = "/cds-services/esi-failure-pathway"


def _chart(patient: str) -> list[dict[str, Any]]:
    """What else a chart holds: vital signs, other conditions and procedures, none of it ESI-KG's."""
    subject = {"reference": f"Patient/{patient}"}
    vitals = [{"resourceType": "Observation", "id": f"v{i}", "status": "final", "subject": subject,
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
               "effectiveDateTime": f"2026-05-{1 + i:02d}", "valueQuantity": {"value": 60 + i, "unit": "/min"}}
              for i in range(20)]
    other = [{"resourceType": kind, "id": f"o{kind[0]}{i}", "subject": subject,
              "code": {"coding": [{"system": "http://snomed.info/sct", "code": str(38341003 + i),
                                   "display": f"another {kind.lower()}"}]}, **extra}
             for kind, extra in (("Condition", {}), ("Procedure", {"status": "completed"})) for i in range(5)]
    return vitals + other


def _cases(n: int, templates: dict[str, str]) -> list[dict[str, Any]]:
    """Generated cases, each with the prefetch a FHIR server holding its chart answers for the templates."""
    graph = kb().ontology.graph
    out = []
    for case in generator(seed=31).cases(n, prefix="cds"):
        held = [e["resource"] for e in bundle(prefetch(case, graph))["entry"]] + _chart(f"pat-{case['id']}")
        out.append({"case": case, "prefetch": {k: answer_template(t, held) for k, t in templates.items()}})
    return out


def _setup(data_dir: Path, key: ec.EllipticCurvePrivateKey) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    jwks = data_dir.parent / "jwks.json"
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "bench", "alg": "ES384"}]}))
    cli = [sys.executable, "-m", "kgservice.cli"]
    subprocess.run([*cli, "cds-client", "add", ISS, "--jwks", str(jwks), "--site", "bench", "--data-dir",
                    str(data_dir)], check=True, capture_output=True, timeout=60)
    done = subprocess.run([*cli, "token", "create", "--site", "bench", "--scope", "pathway:run", "--data-dir",
                           str(data_dir)], check=True, capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def _time(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise RuntimeError(f"POST {path}: {response.status} {data[:300]!r}")
    return elapsed


def run(quick: bool) -> str:
    n, warm = (60, 10) if quick else (400, 30)
    work = Path(tempfile.mkdtemp(prefix="esi-cds-", dir=root()))
    key = ec.generate_private_key(ec.SECP384R1())
    token = _setup(work / "data", key)
    from kgservice.http.cds import prefetch_templates

    items = _cases(n + warm, prefetch_templates(kb().fhir_codes))
    samples: dict[str, list[float]] = {}
    cpu_ms: dict[str, float] = {}
    with Server(work / "data", env={"ESI_AUTH_REQUIRED": "true"}) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        aud = f"http://127.0.0.1:{server.port}{SERVICE}"
        for name in ("json", "fhir", "cds"):
            samples[name] = []
            cpu = group_cpu_s(server.pgid)
            for i, item in enumerate(items):
                case, data = item["case"], item["prefetch"]
                if name == "cds":
                    now = int(time.time())
                    signed = jwt.encode({"iss": ISS, "aud": aud, "exp": now + 60, "iat": now,
                                         "jti": str(uuid.uuid4())}, key, algorithm="ES384",
                                        headers={"kid": "bench", "typ": "JWT"})
                    path, media, bearer = SERVICE, "application/json", signed
                    body = json.dumps(hook_request(data, f"pat-{case['id']}", str(uuid.uuid4()))).encode()
                else:
                    path, media, bearer = "/pathway", ("application/json" if name == "json"
                                                       else "application/fhir+json"), token
                    body = json.dumps(case if name == "json" else bundle(data)).encode()
                elapsed = _time(conn, path, body, {"Content-Type": media, "Authorization": f"Bearer {bearer}"})
                if i >= warm:
                    samples[name].append(elapsed)
            cpu_ms[name] = (group_cpu_s(server.pgid) - cpu) * 1000 / len(items)
        conn.close()
    size = sum(len(json.dumps(item["prefetch"])) for item in items) / len(items) / 1024
    labels = {"json": "POST /pathway, contract JSON", "fhir": "POST /pathway, FHIR Bundle (application/fhir+json)",
              "cds": f"CDS Hooks patient-view call, prefetch of {size:.1f} KiB with a JWT"}
    rows = [[labels[k], s["n"], s["p50"], s["p95"], s["p99"], cpu_ms[k]] for k, s in
            ((k, summary_ms(v)) for k, v in samples.items())]
    return table("CDS Hooks call beside POST /pathway over HTTP (1 client, sequential, auth on)",
                 ["request", "n", "p50 ms", "p95 ms", "p99 ms", "server CPU ms/request"], rows)
