"""A real Virtuoso for the tests of the remote store (``ESI_STORE=sparql``).

``.ci/run`` starts one with ``scripts/virtuoso.sh`` and exports ``ESI_TEST_SPARQL_ENDPOINT``;
elsewhere the session starts its own on free loopback ports (and stops it at the end) when
``virtuoso-t`` is installed. Without either, the remote-store variants are skipped, saying
why, except in CI (``CI=true``), where a missing Virtuoso is an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverutil import free_port

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "virtuoso.sh"


def wipe(endpoint: str) -> None:
    """Remove every ESI-KG graph, so that a test starts from an empty store."""
    update = ('DELETE { GRAPH ?g { ?s ?p ?o } } WHERE { GRAPH ?g { ?s ?p ?o } '
              'FILTER(STRSTARTS(STR(?g), "https://w3id.org/esi-kg/")) }')
    httpx.post(endpoint, data={"update": update}, timeout=60, trust_env=False).raise_for_status()


def virtuoso_endpoint() -> Iterator[str]:
    given = os.environ.get("ESI_TEST_SPARQL_ENDPOINT")
    if given:
        yield given
        return
    if shutil.which("virtuoso-t") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test the remote store: Virtuoso is not installed (.ci/run installs it)")
        pytest.skip("the remote-store variant needs Virtuoso: apt-get install virtuoso-opensource")
    folder = tempfile.mkdtemp(prefix="esi-virtuoso-")
    port = free_port()
    started = subprocess.run(["bash", str(SCRIPT), "start", folder, str(port), str(free_port())],
                             capture_output=True, text=True, timeout=120, check=False)
    if started.returncode != 0:
        pytest.fail(f"scripts/virtuoso.sh start failed: {started.stderr[-2000:]}")
    try:
        yield f"http://127.0.0.1:{port}/sparql"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", folder], capture_output=True, timeout=60, check=False)
        shutil.rmtree(folder, ignore_errors=True)
