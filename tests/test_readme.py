"""The README's examples work when pasted: its "try a case" lines against a real server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serverutil import RealServer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def shell_block(after: str) -> str:
    """The first ```sh block after the line that starts with ``after``."""
    start = README.index("\n" + after)
    match = re.compile(r"```sh\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no sh block after {after!r}"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run installs it)")
def test_try_a_case_works_pasted_after_the_run_command(tmp_path: Path) -> None:
    """As a new user would: the service runs with authentication on, over ./data; the lines
    make a token first and then use it (no 401)."""
    data = tmp_path / "data"
    script = shell_block("Against the running service")
    assert "TOKEN=$(.venv/bin/kgservice token create" in script, "the example makes its token first"
    with RealServer(data, auth_required=True) as server:
        pasted = (script.replace(".venv/bin/kgservice", f"{Path(sys.executable).parent}/kgservice")
                  .replace("http://127.0.0.1:8000", server.base_url))
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", pasted], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, env={"PATH": "/usr/bin:/bin", "ESI_DATA_DIR": str(data)})
    out = run.stdout
    assert run.returncode == 0, run.stderr
    assert "unauthorized" not in out.lower() and '"status": 4' not in out, out
    assert out.count('"case": "p08"') >= 3, out  # POST /pathway, POST /cases, GET /cases/p08/pathway
    assert re.search(r"HTTP/1\.1 201 ", out) and re.search(r"^Location: /cases/p08\s*$", out, re.M), out
    assert '"bindings"' in out and "/case/default/p08" in out, out
