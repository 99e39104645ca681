"""Build hook: fetch the pages' browser code from the npm registry and bundle it into the package.

``npm ci`` installs exactly what ``package-lock.json`` pins (CodeMirror 6 and its SPARQL mode,
esbuild, axe-core for the browser tests) into ``node_modules/``; ``web/build.mjs`` bundles the
editor into ``kgservice/static/vendor/``. Both folders are git-ignored: third-party code is
never committed. Runs for ``pip install -e .`` (editable) and for wheels.

Without npm the build stops and says so. ``ESI_WEB_BUILD=skip`` installs the API without the
editor bundle; the query page then falls back to a plain text area.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

VENDOR = "kgservice/static/vendor"
STAMP = "node_modules/.esi-lock-sha256"


class WebBuildHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return  # an sdist ships the sources (package.json, the lock file, web/), not the bundle
        if os.environ.get("ESI_WEB_BUILD", "").lower() == "skip":
            self.app.display_warning("ESI_WEB_BUILD=skip: the SPARQL editor is not built; the API is unaffected")
            return
        root = Path(self.root)
        npm, node = shutil.which("npm"), shutil.which("node")
        if npm is None or node is None:
            raise RuntimeError(
                "ESI-KG's web pages need Node.js and npm to fetch their browser code from the npm registry "
                "(Debian: apt-get install nodejs npm). To install the API without the SPARQL editor, "
                "set ESI_WEB_BUILD=skip."
            )
        lock = hashlib.sha256((root / "package-lock.json").read_bytes()).hexdigest()
        stamp = root / STAMP
        if not stamp.is_file() or stamp.read_text().strip() != lock:
            self.app.display_info("npm ci: installing the browser code pinned by package-lock.json")
            self._run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], root)
            stamp.write_text(lock + "\n")
        self._run([node, "web/build.mjs"], root)
        build_data["artifacts"].append(f"/{VENDOR}/")

    @staticmethod
    def _run(command: list[str], cwd: Path) -> None:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
