"""CDS Hooks 2.0: discovery, the ``esi-failure-pathway`` service on ``patient-view``, feedback.

The service reads only what the CDS client sends as prefetch: ESI-KG never calls the
client's ``fhirServer`` (nothing leaves the service; the network guard would refuse it), so
a request missing a prefetch key gets ``412 Precondition Failed``, as the spec says of a
service that cannot get its data. A prefetch value of ``null`` means "no such data".
The prefetch is validated as FHIR R4 (``422`` with what is wrong), mapped to a case
(:mod:`fhir`), answered by the same pipeline as ``POST /pathway`` and turned into cards
(:mod:`cards`). Every call, refused ones too, leaves an audit record.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from ..core import fhir
from ..core.cases import load_json
from ..core.codes import CodeMap
from ..core.ontology import ESI
from ..errors import ESIError, InvalidCase, MalformedInput
from ..security.cdsauth import CdsClients, ReplayCache, verify
from .cards import CardBuilder
from .web import service

SERVICE_ID = "esi-failure-pathway"
HOOK = "patient-view"
#: What ESI-KG reads, one template per prefetch key. Observations are those coded as pain
#: scores or block results (the codes come from the ontology: :func:`prefetch_templates`);
#: findings and red flags come as Conditions.
OBSERVED = (ESI.PainScoreObservation, ESI.DiagnosticBlockResult)
KEYS = ("patient", "conditions", "procedures", "observations")
DEFAULT_SITE = "default"
HOOK_INSTANCE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a UUID, leniently

bp = Blueprint("cds", __name__, url_prefix="/cds-services")


class PrefetchMissing(ESIError):
    status = 412
    type_slug = "prefetch-missing"
    title = "Precondition Failed"


def install(app: Any, settings: Any) -> None:
    app.extensions["esi-cds-clients"] = CdsClients(settings.cds_clients_path)
    app.extensions["esi-cds-replay"] = ReplayCache(settings.data_dir / "cds-jti.sqlite", settings.cds_replay_cache)
    app.register_blueprint(bp)


@bp.before_request
def _authenticate() -> None:
    settings = service().settings
    g.cds_client, g.cds_site = None, DEFAULT_SITE
    if not settings.auth_required:
        return
    from ..security.auth import Unauthorized

    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("CDS Hooks calls carry Authorization: Bearer <JWT signed by the CDS client>")
    client = verify(token.strip(), current_app.extensions["esi-cds-clients"],
                    current_app.extensions["esi-cds-replay"], settings.base_url + request.path,
                    settings.cds_max_token_s)
    g.cds_client, g.cds_site = client.iss, client.site


@bp.after_request
def _audit(response: Response) -> Response:
    if request.method == "POST":
        current_app.extensions["esi-audit"].record(
            action=f"POST {request.path}", scope="cds-hooks", token=None, cds_client=g.get("cds_client"),
            site=g.get("cds_site") if g.get("cds_client") or not service().settings.auth_required else None,
            **g.get("cds_audit", {}), outcome=response.status_code, client=request.remote_addr)
    response.headers["Cache-Control"] = "no-store"
    return response


def prefetch_templates(codes: CodeMap) -> dict[str, str]:
    patient = "patient={{context.patientId}}"
    observed = ",".join(token for term in OBSERVED for token in codes.tokens(term))
    return {"patient": "Patient/{{context.patientId}}", "conditions": f"Condition?{patient}",
            "procedures": f"Procedure?{patient}", "observations": f"Observation?{patient}&code={observed}"}


@bp.get("")
def discovery() -> Response:
    body = {"services": [{
        "hook": HOOK,
        "id": SERVICE_ID,
        "title": "ESI-KG: after a failed epidural steroid injection",
        "description": "Assesses how the patient responded to their latest epidural steroid injection (0-10 pain "
                       "scores before and after it) and lists the next care pathways in their order of care, each "
                       "with why and the article section; a red flag asks for an urgent spine surgeon consultation.",
        "prefetch": prefetch_templates(service().kb.fhir_codes),
    }]}
    return Response(json.dumps(body), mimetype="application/json")


@bp.post(f"/{SERVICE_ID}")
def call() -> Response:
    hook = _hook_request()
    g.cds_audit = {"hook_instance": hook["hookInstance"]}
    resources, patient_id = _prefetched(hook)
    kb = service().kb
    builder = CardBuilder(kb, service().settings.base_url)
    mapped = fhir.to_case(resources, kb.fhir_codes)
    if mapped.problems:
        return _cards([builder.unassessable_card(mapped.problems, mapped.report())])
    try:
        answer = service().pathway(json.dumps(mapped.case).encode("utf-8"), "application/json", g.cds_site)
    except ESIError as exc:  # an invalid case comes back from a reasoning worker as its problem JSON
        if exc.status != InvalidCase.status:
            raise
        problems = [{**v, "source": mapped.resource_of(v["path"])} for v in exc.problem().get("violations", [])]
        return _cards([builder.unassessable_card(problems, mapped.report())])
    g.cds_audit["case"] = answer.get("case")
    return _cards(builder.cards(answer, patient_id, mapped.report()))


@bp.post(f"/{SERVICE_ID}/feedback")
def feedback() -> Response:
    body = _json_object()
    items = body.get("feedback")
    if not isinstance(items, list) or not items or len(items) > 100:
        raise MalformedInput("feedback must be an array of 1 to 100 Feedback objects")
    recorded = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("card"), str) \
                or item.get("outcome") not in ("accepted", "overridden") \
                or not isinstance(item.get("outcomeTimestamp"), str):
            raise MalformedInput(f"feedback[{i}] needs card (a uuid), outcome (accepted or overridden) "
                                 "and outcomeTimestamp")
        accepted = item.get("acceptedSuggestions", [])
        if item["outcome"] == "accepted" and (not isinstance(accepted, list) or not accepted or not all(
                isinstance(a, dict) and isinstance(a.get("id"), str) for a in accepted)):
            raise MalformedInput(f"feedback[{i}]: an accepted outcome lists acceptedSuggestions, each with an id")
        reason: dict[str, Any] = item["overrideReason"] if isinstance(item.get("overrideReason"), dict) else {}
        coding: dict[str, Any] = reason["reason"] if isinstance(reason.get("reason"), dict) else {}
        recorded.append({"card": _text(item["card"]), "outcome": item["outcome"],
                         "accepted": [_text(a["id"]) for a in accepted] if item["outcome"] == "accepted" else [],
                         "override_reason": _text(coding.get("code")), "at": _text(item["outcomeTimestamp"])})
    g.cds_audit = {"feedback": recorded}
    return Response(status=200)


def _text(value: Any, limit: int = 64) -> str | None:
    """A client's string as it goes into the audit log: ASCII (escapes kept), bounded."""
    return value.encode("ascii", "backslashreplace").decode("ascii")[:limit] if isinstance(value, str) else None


# -- reading the hook request ---------------------------------------------------------------


def _json_object() -> dict[str, Any]:
    kind = (request.content_type or "").split(";", 1)[0].strip().lower()
    if kind not in ("application/json", fhir.FHIR_JSON):
        from ..errors import UnsupportedMediaType

        raise UnsupportedMediaType("CDS Hooks requests are application/json")
    data = load_json(request.get_data(cache=False))
    if not isinstance(data, dict):
        raise MalformedInput("the request must be a JSON object")
    return data


def _hook_request() -> dict[str, Any]:
    data = _json_object()
    if data.get("hook") != HOOK:
        raise MalformedInput(f"this service answers the {HOOK} hook, not {data.get('hook')!r}")
    if not isinstance(data.get("hookInstance"), str) or not HOOK_INSTANCE.fullmatch(data["hookInstance"]):
        raise MalformedInput("hookInstance (a UUID) is required")
    context = data.get("context")
    if not isinstance(context, dict) or not isinstance(context.get("patientId"), str) or not context["patientId"]:
        raise MalformedInput("context.patientId is required for patient-view")
    if "prefetch" in data and not isinstance(data["prefetch"], dict):
        raise MalformedInput("prefetch must be an object keyed by the prefetch templates' keys")
    return data


def _prefetched(hook: dict[str, Any]) -> tuple[list[Any], str]:
    prefetch = hook.get("prefetch", {})
    missing = [key for key in KEYS if key not in prefetch]
    if missing:
        server = " ESI-KG does not query fhirServer: nothing leaves the service." if hook.get("fhirServer") else ""
        raise PrefetchMissing(f"prefetch lacks {', '.join(missing)}; send every template of the discovery "
                              f"response (null where there is no data).{server}", missing=missing)
    patient_id = hook["context"]["patientId"]
    resources: list[Any] = []
    for key in KEYS:
        if prefetch[key] is not None:
            resources += fhir.parse(prefetch[key], f"prefetch.{key}")
    for r in resources:
        if r.get_resource_type() == "Patient" and r.id != patient_id:
            raise fhir.InvalidFHIR([{"location": "prefetch.patient.id",
                                     "message": f"the Patient is {r.id!r}, the context's patientId {patient_id!r}"}])
    return resources, patient_id


def _cards(cards: list[dict[str, Any]]) -> Response:
    # ASCII-escaped: text from the EHR may hold lone surrogates, which UTF-8 cannot encode
    return Response(json.dumps({"cards": cards}), mimetype="application/json")
