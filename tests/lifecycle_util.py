"""Stores written under ontology 1.0 (as the previous release wrote them), and newer ontologies.

``tests/data/ontology/esi-1.0.0.ttl`` is the ontology of the 1.0 release, kept as test data.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyoxigraph as ox

from kgservice.bulk import load
from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
from kgservice.core.ontology import ESI
from kgservice.stores.oxigraph import Stores

DATA = Path(__file__).parent / "data"
ONTOLOGY_1_0 = DATA / "ontology" / "esi-1.0.0.ttl"
BENCH = Path(__file__).parent.parent / "bench"


def generated_cases(n: int, prefix: str = "syn", seed: int = 7) -> list[dict[str, Any]]:
    """``n`` of the benchmark's seeded synthetic cases."""
    sys.path.insert(0, str(BENCH))
    try:
        from generator import CaseGenerator
    finally:
        sys.path.remove(str(BENCH))
    return list(CaseGenerator(_input_vocabulary(), seed=seed).cases(n, prefix))


@functools.cache
def _input_vocabulary() -> dict[str, Any]:
    """The shipped contract's input codes, read once per test process (a knowledge base takes a second)."""
    return KnowledgeBase.from_settings(Settings()).vocabulary["input"]  # type: ignore[no-any-return]


def store_under_1_0(data_dir: Path, cases: list[dict[str, Any]], site: str = "default",
                    ontology: Path | None = None) -> Settings:
    """Load ``cases`` into ``site`` with this code and ``ontology`` (default: the shipped one); its settings."""
    settings = Settings(data_dir=data_dir, auth_required=False, **({"ontology_path": ontology} if ontology else {}))
    data_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir / f"cases-{site}.jsonl"
    source.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")
    summary = load(settings, source, site=site, workers=0, progress=None)
    assert summary.loaded == len(cases), summary.rejections
    source.unlink()
    return settings


#: The sites of the previous release's store (tests/data/stores/README.md) and their cases.
PREVIOUS_SITES = {"default": 151, "south": 10}


def previous_release_store(data_dir: Path) -> Settings:
    """The store the 1.0 release wrote (tests/data/stores), in ``data_dir``; the shipped settings."""
    stores = Stores(data_dir)
    try:
        for site, cases in PREVIOUS_SITES.items():
            body = gzip.decompress((DATA / "stores" / f"esi-1.0.0-{site}.nq.gz").read_bytes())
            stores.site(site).load_nquads(body, cases)
    finally:
        stores.close()
    return Settings(data_dir=data_dir, auth_required=False)


def stored_versions(site_dir: Path) -> dict[str, list[str]]:
    """Every case of a site's store with each ontology version its inferred graph names,
    read without the write lock (the store may be open in another process)."""
    for attempt in range(50):  # a read-only open can fail while the writer renames its files
        try:
            store = ox.Store.read_only(str(site_dir))
            break
        except (OSError, RuntimeError):
            if attempt == 49:
                raise
            time.sleep(0.02)
    found: dict[str, list[str]] = {}
    for quad in store.quads_for_pattern(None, ox.NamedNode(str(ESI.ontologyVersion)), None, None):
        if isinstance(quad.graph_name, ox.NamedNode) and quad.graph_name.value.endswith("/inferred"):
            found.setdefault(quad.subject.value.rsplit("/", 1)[-1], []).append(quad.object.value)
    return found


def kgservice(*args: str, settings: Settings, **popen: Any) -> subprocess.Popen[bytes]:
    """``kgservice ARGS`` in a new process group, with the ontology of ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESI_")}
    env["ESI_ONTOLOGY_PATH"] = str(settings.ontology_path)
    return subprocess.Popen([sys.executable, "-m", "kgservice.cli", *args], env=env, start_new_session=True,
                            **popen)


def lines(text: bytes) -> Iterator[str]:
    yield from text.decode("utf-8", "replace").replace("\r", "\n").splitlines()
