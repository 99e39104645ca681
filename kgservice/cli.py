"""The ``kgservice`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ENGINES, Settings
from .errors import ESIError, InvalidCase, MalformedInput


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        settings = Settings.from_env(engine=getattr(args, "engine", None))
    except ValueError as exc:
        print(f"kgservice: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.run(args, settings))
    except BrokenPipeError:  # e.g. `kgservice pathway case.json | head`
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kgservice", description="ESI-KG: care after a failed epidural injection")
    sub = parser.add_subparsers(title="commands")

    p = sub.add_parser("pathway", help="answer one case, or a JSON array of cases, from a file ('-' for stdin)")
    p.add_argument("file", help="a JSON file holding a case object or an array of cases")
    p.add_argument("--engine", choices=ENGINES, help="OWL 2 RL engine (default: ESI_ENGINE or reasonable)")
    p.set_defaults(run=cmd_pathway)

    s = sub.add_parser("serve", help="start the service (gunicorn) on the embedded store")
    s.add_argument("--host", help="address to listen on (default: ESI_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default: ESI_PORT or 8000)")
    s.add_argument("--data-dir", type=Path, help="where the stores live (default: ESI_DATA_DIR or ./data)")
    s.add_argument("--engine", choices=ENGINES, help="OWL 2 RL engine (default: ESI_ENGINE or reasonable)")
    s.set_defaults(run=cmd_serve)

    c = sub.add_parser("check", help="check the ontology: quality shapes, OWL 2 RL profile, rules")
    c.add_argument("--ontology", type=Path, help="ontology file (default: the shipped one or ESI_ONTOLOGY_PATH)")
    c.set_defaults(run=cmd_check)
    return parser


def cmd_pathway(args: argparse.Namespace, settings: Settings) -> int:
    from .kb import KnowledgeBase

    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"kgservice: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    from .cases import load_json

    try:
        data = load_json(raw)
    except MalformedInput as exc:
        print(f"kgservice: {args.file}: {exc.detail}", file=sys.stderr)
        return 2
    kb = KnowledgeBase.from_settings(settings)
    items = data if isinstance(data, list) else [data]
    results: list[dict[str, Any]] = []
    failed = False
    for start in range(0, len(items), settings.max_batch):
        chunk = items[start:start + settings.max_batch]
        outcome: list[Any] = []
        valid = []
        for item in chunk:
            try:
                case = kb.read_json(item)
                problems = kb.check(case)
                if problems:
                    raise InvalidCase(problems)
                valid.append(case)
                outcome.append(case)
            except ESIError as exc:
                failed = True
                outcome.append(exc.problem())
        answers = iter(r.answer for r in kb.reason_valid(valid))
        results.extend(next(answers) if not isinstance(o, dict) else o for o in outcome)
    out = results if isinstance(data, list) else results[0]
    json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .server import serve

    settings = settings.with_(**{k: v for k, v in (("host", args.host), ("port", args.port),
                                                   ("data_dir", args.data_dir)) if v is not None})
    serve(settings)
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from .quality import check_ontology

    if args.ontology is not None:
        settings = settings.with_(ontology_path=args.ontology)
    report = check_ontology(settings)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
