"""SPARQL over stored cases: the named queries and three ad-hoc analytical queries, Oxigraph vs rdflib.

Oxigraph: the site's store as ``kgservice load`` left it, opened read-only in-process
(``pyoxigraph.Store.read_only``), queried as the service does (the default graph is the
union of all graphs; named-query parameters bound by the engine, with each ``#+`` header's
example value; the case of ``case-explanations`` is a stored case).

Baseline, in the same run: the same queries on the same quads in an rdflib in-memory
``Dataset(default_union=True)`` (parameters as ``initBindings``). rdflib holds every quad as
Python objects, so on the full store it only gets a subset: the ontology graphs and the
first N_r cases; Oxigraph is then timed on the very same subset (in memory) for the
ratio, and on the whole store. rdflib runs in a subprocess that is stopped when one query
takes longer than the limit ("> limit").
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sparql_http
from common import table

HERE = Path(__file__).resolve().parent
ESI = "https://w3id.org/esi-kg/ontology#"
XSD = "http://www.w3.org/2001/XMLSchema#"
TARGET = 10.0

ADHOC = {
    "ad hoc: GROUP BY, cases per pathway": f"""PREFIX esi: <{ESI}>
SELECT ?pathway (COUNT(DISTINCT ?case) AS ?cases) WHERE {{ ?case esi:hasApplicablePathway ?pathway }}
GROUP BY ?pathway ORDER BY DESC(?cases)""",
    "ad hoc: property path, red-flag classes (rdfs:subClassOf*) and their cases": f"""PREFIX esi: <{ESI}>
PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>
SELECT ?class (COUNT(DISTINCT ?case) AS ?cases) WHERE {{
  ?class rdfs:subClassOf* esi:RedFlag .
  OPTIONAL {{ ?sign a ?class . ?case esi:hasRedFlag ?sign }}
}} GROUP BY ?class""",
    "ad hoc: one case by IRI (asserted + inferred)": "SELECT ?p ?o WHERE { <CASE> ?p ?o }",
}


def _queries(case: str) -> list[dict[str, Any]]:
    """Every named query with its example bindings, then the ad-hoc ones: name, text, bindings."""
    from kgservice.config import Settings
    from kgservice.http.queries import Catalog

    found = []
    for q in Catalog.load(Settings().queries_dir).queries.values():
        bindings: dict[str, list[str]] = {}
        args: dict[str, str] = {}
        for p in q.params:
            value = p.example
            args[p.name] = case if p.type == "iri" and p.name == "case" else value
            if p.type == "code":
                bindings[p.name] = ["iri", ESI + value]
            elif p.type == "iri":
                bindings[p.name] = ["iri", case if p.name == "case" else value]
            elif p.type == "integer":
                bindings[p.name] = ["literal", value, XSD + "integer"]
            else:
                bindings[p.name] = ["literal", value, XSD + "string"]
        found.append({"name": f"named: {q.name}", "text": q.text, "bindings": bindings,
                      "path": f"/queries/{q.name}" + (f"?{urlencode(args)}" if args else "")})
    for name, text in ADHOC.items():
        found.append({"name": name, "text": text.replace("CASE", case), "bindings": {}, "path": None})
    return found


# -- Oxigraph --------------------------------------------------------------------------------


def _ox_bindings(spec: dict[str, list[str]]) -> dict[Any, Any]:
    import pyoxigraph as ox

    return {ox.Variable(k): ox.NamedNode(v[1]) if v[0] == "iri" else ox.Literal(v[1], datatype=ox.NamedNode(v[2]))
            for k, v in spec.items()}


def _ox_time(store: Any, query: dict[str, Any], reps: int, budget: float) -> tuple[list[float], int]:
    subs = _ox_bindings(query["bindings"])
    times: list[float] = []
    rows = 0
    list(store.query(query["text"], substitutions=subs, use_default_graph_as_union=True))  # warm
    while len(times) < reps and sum(times) < budget:
        start = time.perf_counter()
        rows = len(list(store.query(query["text"], substitutions=subs, use_default_graph_as_union=True)))
        times.append(time.perf_counter() - start)
    return times, rows


def _subset(store: Any, n_cases: int, path: Path) -> int:
    """The ontology graphs and the first n cases' graphs, as N-Quads; returns the number of quads."""
    import pyoxigraph as ox
    from ingest import case_iri

    from kgservice.stores.base import CLOSURE_GRAPH, ONTOLOGY_GRAPH

    graphs = [ONTOLOGY_GRAPH, CLOSURE_GRAPH]
    for i in range(n_cases):
        iri = case_iri(i)
        graphs += [ox.NamedNode(iri), ox.NamedNode(iri + "/inferred")]
    count = 0
    with path.open("wb") as out:
        for g in graphs:
            quads = list(store.quads_for_pattern(None, None, None, g))
            count += len(quads)
            out.write(ox.serialize(quads, format=ox.RdfFormat.N_QUADS))
    return count


# -- rdflib, in a subprocess -----------------------------------------------------------------


def _worker(data: str, queries_file: str, start: int, reps: int, budget: float) -> None:
    from rdflib import Dataset, Literal, URIRef

    queries = json.loads(Path(queries_file).read_text())
    began = time.perf_counter()
    ds = Dataset(default_union=True)
    ds.parse(data, format="nquads")
    print(json.dumps({"loaded": time.perf_counter() - began}), flush=True)
    for i in range(start, len(queries)):
        q = queries[i]
        bindings = {k: URIRef(v[1]) if v[0] == "iri" else Literal(v[1], datatype=URIRef(v[2]))
                    for k, v in q["bindings"].items()}
        spent = 0.0
        for _ in range(reps):
            t0 = time.perf_counter()
            rows = len(list(ds.query(q["text"], initBindings=bindings)))
            t = time.perf_counter() - t0
            spent += t
            print(json.dumps({"q": i, "t": t, "rows": rows}), flush=True)
            if spent > budget:
                break
        print(json.dumps({"q": i, "done": True}), flush=True)


def _rdflib_times(data: Path, queries: list[dict[str, Any]], reps: int, budget: float,
                  limit: float) -> tuple[dict[int, Any], float]:
    """Per query: (times, rows), or None when one run passed ``limit``; and rdflib's load time."""
    qfile = data.with_suffix(".queries.json")
    qfile.write_text(json.dumps(queries))
    out: dict[int, Any] = {}
    load_s = float("nan")
    start = 0
    while start < len(queries):
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--rdflib-worker", str(data),
                                 str(qfile), str(start), str(reps), str(budget)],
                                stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None
        current, deadline = start, time.monotonic() + 1800  # loading
        buffer = b""
        try:
            while True:
                left = deadline - time.monotonic()
                ready = select.select([proc.stdout], [], [], max(0.0, left))[0] if left > 0 else []
                if not ready:
                    if current not in out:
                        out[current] = None  # > limit
                    start = current + 1
                    break
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    start = len(queries)  # finished (or died)
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    msg = json.loads(line)
                    if "loaded" in msg:
                        load_s = msg["loaded"] if load_s != load_s else load_s
                    elif msg.get("done"):
                        current = msg["q"] + 1
                    else:
                        times, _ = out.setdefault(msg["q"], ([], 0))
                        out[msg["q"]] = (times + [msg["t"]], msg["rows"])
                    deadline = time.monotonic() + limit
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            proc.wait()
    return out, load_s


# -- the benchmark ---------------------------------------------------------------------------


def run(quick: bool) -> str:
    import statistics

    import pyoxigraph as ox
    from ingest import case_iri, prepared_store, root

    n = 2_000 if quick else 100_000
    n_rdflib = min(n, 1_000 if quick else 10_000)
    reps, ox_budget = 5, (5.0 if quick else 30.0)
    rdf_reps, rdf_budget, limit = 3, (3.0 if quick else 60.0), (5.0 if quick else 60.0)

    data_dir = prepared_store(n)
    store = ox.Store.read_only(str(data_dir / "sites" / "default"))
    queries = _queries(case_iri(7))
    work = Path(tempfile.mkdtemp(prefix="esi-sparql-", dir=root()))
    try:
        full = [_ox_time(store, q, reps, ox_budget) for q in queries]
        nquads = work / "subset.nq"
        n_quads = _subset(store, n_rdflib, nquads)
        memory = ox.Store()
        memory.load(path=str(nquads), format=ox.RdfFormat.N_QUADS)
        small = [_ox_time(memory, q, reps, ox_budget) for q in queries]
        rdf, rdf_load = _rdflib_times(nquads, queries, rdf_reps, rdf_budget, limit)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_quads = len(store)
    del store

    rows: list[list[Any]] = []
    ratios: list[tuple[str, float | None]] = []
    for i, q in enumerate(queries):
        ox_full = statistics.median(full[i][0]) * 1000
        ox_small = statistics.median(small[i][0]) * 1000
        if i not in rdf:
            rdf_cell, same, ratio = "failed", "n/a", None
        elif rdf[i] is None:
            rdf_cell, same, ratio = f"> {limit:g} s", "n/a", None
        else:
            times, rdf_rows = rdf[i]
            rdf_ms = statistics.median(times) * 1000
            rdf_cell = rdf_ms
            same = "yes" if rdf_rows == small[i][1] else f"no ({small[i][1]} vs {rdf_rows})"
            ratio = rdf_ms / ox_small
        ratios.append((q["name"], ratio))
        rows.append([q["name"], full[i][1], ox_full, ox_small, rdf_cell, same,
                     f"{ratio:.0f}x" if ratio is not None else
                     "n/a" if rdf_cell == "failed" else f"> {limit * 1000 / ox_small:.0f}x"])
    missed = [name for name, r in ratios if r is not None and r < TARGET]
    verdict = (f"target >= {TARGET:g}x faster than rdflib on every query: {'met' if not missed else 'NOT met'}"
               + (f" (below: {', '.join(missed)})" if missed else "")
               + f"; {sum(r is None for _, r in ratios)} rdflib queries stopped at the {limit:g} s limit. "
               f"Store: {n} cases, {total_quads} quads; rdflib and Oxigraph-in-memory on the ontology + the first "
               f"{n_rdflib} cases ({n_quads} quads; rdflib parsed them in {rdf_load:.1f} s)")
    header = ["query", f"rows ({n} cases)", f"Oxigraph on disk, {n} cases, p50 ms",
              f"Oxigraph in memory, {n_rdflib} cases, p50 ms", f"rdflib Dataset, {n_rdflib} cases, p50 ms",
              "same rows", "speed-up vs rdflib (same data)"]
    return table("SPARQL: named queries and ad-hoc queries, Oxigraph vs rdflib (baseline)", header, rows) \
        + "\n\n" + verdict + "\n" + sparql_http.run(data_dir, queries, n, quick)


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--rdflib-worker":
    _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
