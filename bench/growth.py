"""Growth: every named query and ``GET /cases?per_page=50`` on stores of N1 and N2 cases.

The stores: the generated cases of ``prepared_store(2000)`` (reasoned by ``kgservice load``),
copied K times under new case ids (``kg-000007`` becomes ``r01-kg-000007``, ...; copy 0 keeps
its ids), each copy loaded by Oxigraph's bulk loader, then compacted. So the N2 store holds N2/N1
times the N1 store's cases, case for case the same facts: each query's rows grow by that factor,
and the growth exponent log(t2/t1) / log(N2/N1) says how its time grows with the cases it reads
(1: linear). Targets: every named query <= 1 (0.1 allowed for timer noise), ``GET /cases`` ~ 0.

Named queries run as ``bench/sparql.py`` runs them (``Store.query`` on the store opened
read-only, the union default graph, each ``#+`` header's example bound by the engine; the case
of ``case-explanations`` is ``kg-000007``). ``GET /cases?per_page=50`` is timed through the
method the endpoint calls, ``OxigraphSite.case_ids(None, None, 50, 0)`` (ids of one page and the
count kept per site): its first call makes the count (reported apart), later ones read it.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import table

#: Copies of the 2000 reasoned cases in each store: quick 2k and 20k cases; full 10k and 100k.
QUICK, FULL = (1, 10), (5, 50)
BASE = 2_000
ESI = "https://w3id.org/esi-kg/ontology#"
#: The building block: Oxigraph alone, one triple pattern giving every case's IRI (one index scan, each
#: IRI read back from the store). Its exponent is the store's own: a query that returns rows in
#: proportion to the cases cannot grow slower than this.
FLOOR = "building block: Store.query, one pattern, every case's IRI"
#: The second building block: the same, sorted by case id as the named queries that list cases sort
#: (the end of the IRI). Sorting is n log n: from 10k to 100k cases that alone adds about 0.1 to an
#: exponent, which is what such a query cannot do without.
SORTED = "building block: the same, ORDER BY case id"
TOLERANCE = 0.1


def _copy_store(copies: int) -> Path:
    """A data dir with ``copies`` copies of the base store's cases (made once, then reused)."""
    import pyoxigraph as ox
    from ingest import _marker, prepared_store, root

    from kgservice.stores.base import CLOSURE_GRAPH, ONTOLOGY_GRAPH

    n = BASE * copies
    data_dir = root() / f"growth-{n}"
    marker = data_dir / "bench.json"
    expected = {**_marker(BASE), "copies": copies}
    if marker.exists() and json.loads(marker.read_text()) == expected:
        return data_dir
    shutil.rmtree(data_dir, ignore_errors=True)
    base = ox.Store.read_only(str(prepared_store(BASE) / "sites" / "default"))
    ontology = b"".join(ox.serialize(base.quads_for_pattern(None, None, None, g), format=ox.RdfFormat.N_QUADS)
                        for g in (ONTOLOGY_GRAPH, CLOSURE_GRAPH))
    cases = b"".join(ox.serialize(base.quads_for_pattern(None, None, None, g), format=ox.RdfFormat.N_QUADS)
                     for g in base.named_graphs() if g not in (ONTOLOGY_GRAPH, CLOSURE_GRAPH))
    del base
    print(f"[bench] building {data_dir} ({n} cases) ...", file=sys.stderr, flush=True)
    (data_dir / "sites").mkdir(parents=True)
    store = ox.Store(str(data_dir / "sites" / "default"))
    store.bulk_load(ontology, format=ox.RdfFormat.N_QUADS)
    for k in range(copies):
        copy = cases if k == 0 else cases.replace(b"/case/default/kg-", b"/case/default/r%02d-kg-" % k)
        store.bulk_load(copy, format=ox.RdfFormat.N_QUADS)
    store.optimize()
    del store
    marker.write_text(json.dumps(expected))
    return data_dir


def _interleaved(fns: list[Any], reps: int, budget: float) -> list[tuple[float, float, Any]]:
    """Per function: median CPU seconds (of this thread: the query runs in it), median wall seconds
    and its last result, after one warm-up run each. The functions (one query on each store) take
    turns, one run each, so that a shared machine's load and the page cache's state fall on every
    store alike (timed one store after the other, the exponents of the same queries moved by 0.3
    between runs). CPU time is what the exponent is computed from: on a shared machine it does not
    count the time other processes held the cores."""
    results = [fn() for fn in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    wall: list[list[float]] = [[] for _ in fns]
    while len(cpu[0]) < reps and (sum(map(sum, wall)) < budget or len(cpu[0]) < 3):
        for i, fn in enumerate(fns):
            started, started_cpu = time.perf_counter(), time.thread_time()
            results[i] = fn()
            cpu[i].append(time.thread_time() - started_cpu)
            wall[i].append(time.perf_counter() - started)
    return [(statistics.median(c), statistics.median(w), r) for c, w, r in zip(cpu, wall, results, strict=True)]


def _measure(data_dirs: list[Path], queries: list[dict[str, Any]], reps: int, budget: float) -> list[dict[str, Any]]:
    """Per store, per query name: (CPU p50, wall p50, rows); and GET /cases's first call apart."""
    from sparql import _ox_bindings

    from kgservice.stores.oxigraph import Stores

    stores = [Stores(d, read_only=True) for d in data_dirs]
    sites = [s.site("default") for s in stores]
    out: list[dict[str, Any]] = [{} for _ in sites]
    try:
        for q in queries:
            subs = _ox_bindings(q["bindings"])
            fns = [lambda site=site, q=q, subs=subs: len(list(site.store.query(
                q["text"], substitutions=subs, use_default_graph_as_union=True))) for site in sites]
            for found, measured in zip(out, _interleaved(fns, reps, budget), strict=True):
                found[q["name"]] = measured
        for found, site in zip(out, sites, strict=True):
            started = time.perf_counter()
            first = site.case_ids(None, None, 50, 0)
            found["first"] = (time.perf_counter() - started, first[1])
        pages = [lambda site=site: site.case_ids(None, None, 50, 0)[1] for site in sites]
        for found, measured in zip(out, _interleaved(pages, max(reps, 20), budget), strict=True):
            found["GET /cases?per_page=50"] = measured
    finally:
        for s in stores:
            s.close()
    return out


def run(quick: bool) -> str:
    from ingest import case_iri
    from sparql import _queries

    copies = QUICK if quick else FULL
    reps, budget = (5, 6.0) if quick else (5, 12.0)
    sizes = [BASE * c for c in copies]
    every_case = f"PREFIX esi: <{ESI}> SELECT ?case WHERE {{ ?case a esi:PatientCase }}"
    queries = [{"name": FLOOR, "text": every_case, "bindings": {}},
               {"name": SORTED, "text": every_case + ' ORDER BY (REPLACE(STR(?case), "^.*/", ""))', "bindings": {}},
               *[q for q in _queries(case_iri(7)) if q["name"].startswith("named: ")]]
    measured = _measure([_copy_store(c) for c in copies], queries, reps, budget)
    (n1, n2), growth = sizes, math.log(sizes[1] / sizes[0])

    rows: list[list[Any]] = []
    missed: list[str] = []
    floor = sorted_floor = float("nan")
    for name in [q["name"] for q in queries] + ["GET /cases?per_page=50"]:
        (c1, w1, r1), (c2, w2, r2) = measured[0][name], measured[1][name]
        exponent = math.log(max(c2, 1e-6) / max(c1, 1e-6)) / growth
        flat = name.startswith("GET")
        ok = exponent <= (0.2 if flat else 1.0 + TOLERANCE)
        if name in (FLOOR, SORTED):
            floor, sorted_floor = (exponent, sorted_floor) if name == FLOOR else (floor, exponent)
            rows.append([name, r1, r2, c1 * 1000, c2 * 1000, w1 * 1000, w2 * 1000, f"{exponent:.2f}", "(baseline)"])
            continue
        if not ok:
            missed.append(f"{name.removeprefix('named: ')} ({exponent:.2f})")
        rows.append([name, r1, r2, c1 * 1000, c2 * 1000, w1 * 1000, w2 * 1000, f"{exponent:.2f}",
                     f"{'~ 0' if flat else '<= 1'}: {'met' if ok else 'NOT met'}"])
    (f1, _), (f2, _) = measured[0]["first"], measured[1]["first"]
    rows.append(["GET /cases?per_page=50, first call (makes the count it keeps)", "", "", "", "", f1 * 1000, f2 * 1000,
                 f"{math.log(max(f2, 1e-6) / max(f1, 1e-6)) / growth:.2f}", "once per process"])
    verdict = (f"target: every named query's growth exponent <= 1 (+{TOLERANCE} for timer noise) and GET /cases flat "
               f"(<= 0.2), from {n1} to {n2} cases: {'met' if not missed else 'NOT met'}"
               + (f" (above: {', '.join(missed)})" if missed else "")
               + f"; the store's own exponent (building block rows) is {floor:.2f}, {sorted_floor:.2f} sorted"
               + f". Exponent = log(CPU p50 ratio) / log({n2 // n1}). Stores: {copies[0]} and {copies[1]} copies of "
               f"{BASE} reasoned cases, bulk-loaded and compacted")
    header = ["query", f"rows, {n1} cases", f"rows, {n2} cases", f"CPU p50 ms, {n1}", f"CPU p50 ms, {n2}",
              f"wall p50 ms, {n1}", f"wall p50 ms, {n2}", "growth exponent", "verdict"]
    return table(f"Growth: named queries and GET /cases, {n1} -> {n2} cases", header, rows) + "\n\n" + verdict
