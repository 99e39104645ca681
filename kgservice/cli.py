"""The ``kgservice`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ENGINES, Settings
from .errors import ESIError, MalformedInput, Problem

if TYPE_CHECKING:
    from .security.auth import TokenStore
    from .security.cdsauth import CdsClients


class _Scopes:
    """The token scopes, read only when a command's arguments need them: ``kgservice serve``
    starts sooner without importing the token modules before gunicorn forks its worker."""

    def __iter__(self) -> Iterator[str]:
        from .security.auth import SCOPES

        return iter(sorted(SCOPES))

    def __contains__(self, scope: object) -> bool:
        from .security.auth import SCOPES

        return scope in SCOPES


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
    p.add_argument("--engine", choices=ENGINES, help="OWL 2 RL engine (default: ESI_ENGINE or compiled)")
    p.set_defaults(run=cmd_pathway)

    s = sub.add_parser("serve", help="start the service (gunicorn) on the embedded store")
    s.add_argument("--host", help="address to listen on (default: ESI_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default: ESI_PORT or 8000)")
    s.add_argument("--data-dir", type=Path, help="where the stores live (default: ESI_DATA_DIR or ./data)")
    s.add_argument("--workers", type=int, help="API processes (default: ESI_WORKERS or 1; more than 1 needs "
                                                 "ESI_STORE=sparql)")
    s.add_argument("--engine", choices=ENGINES, help="OWL 2 RL engine (default: ESI_ENGINE or compiled)")
    s.set_defaults(run=cmd_serve)

    ld = sub.add_parser("load", help="validate, reason and store many cases (JSON lines, JSON array, folder)")
    ld.add_argument("path", type=Path)
    ld.add_argument("--site", default="default", help="the site to load into (default: default)")
    ld.add_argument("--data-dir", type=Path, help="where the stores live (default: ESI_DATA_DIR or ./data)")
    ld.add_argument("--batch", type=int, default=200, help="cases reasoned and stored together (default 200)")
    ld.add_argument("--workers", type=int, help="reasoning processes (default: ESI_REASONING_WORKERS or 2)")
    ld.add_argument("--scheduler", metavar="ADDRESS", help="reason on this Dask cluster (tcp://host:8786) "
                                                          "instead of local processes")
    ld.add_argument("--ingest-quads", type=int, metavar="N",
                    help="valid cases are stored together once their N-Quads reach N quads (default 500000; "
                         "the loader's memory grows with N: about 0.8 KB a quad while it stores them)")
    ld.add_argument("--engine", choices=ENGINES)
    ld.set_defaults(run=cmd_load)

    r = sub.add_parser("reason", help="re-reason stored cases: those of older ontology versions (--stale)")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--stale", action="store_true", help="cases reasoned with another ontology version")
    which.add_argument("--all", action="store_true", help="every stored case")
    r.add_argument("--site", action="append", help="only this site (repeatable; default: every site)")
    r.add_argument("--data-dir", type=Path, help="where the stores live (default: ESI_DATA_DIR or ./data)")
    r.add_argument("--batch", type=int, default=200, help="cases reasoned and switched together (default 200)")
    r.add_argument("--workers", type=int, help="reasoning processes (default: ESI_REASONING_WORKERS or 2)")
    r.add_argument("--engine", choices=ENGINES)
    r.add_argument("--scheduler", metavar="ADDRESS", help="reason on this Dask cluster (tcp://host:8786) "
                                                         "instead of local processes")
    r.set_defaults(run=cmd_reason)

    i = sub.add_parser("impact", help="what a proposed ontology would change: stored and regression cases")
    i.add_argument("proposed", type=Path, help="the proposed ontology (Turtle)")
    i.add_argument("--site", action="append", help="only this site's stored cases (repeatable; default: all)")
    i.add_argument("--data-dir", type=Path, help="where the stores live (default: ESI_DATA_DIR or ./data)")
    i.add_argument("--no-store", action="store_true", help="only the regression cases")
    i.add_argument("--format", choices=("text", "json", "md"), default="text")
    i.add_argument("--batch", type=int, default=200, help="cases compared together (default 200)")
    i.add_argument("--workers", type=int, help="processes (default: ESI_REASONING_WORKERS or 2)")
    i.add_argument("--engine", choices=ENGINES)
    i.add_argument("--scheduler", metavar="ADDRESS", help="reason on this Dask cluster (tcp://host:8786) "
                                                         "instead of local processes")
    i.set_defaults(run=cmd_impact)

    d = sub.add_parser("docs", help="write the ontology's HTML documentation (also served at GET /docs)")
    d.add_argument("--out", type=Path, default=Path("docs"), help="folder to write index.html into (default: docs)")
    d.add_argument("--ontology", type=Path, help="ontology file (default: the shipped one or ESI_ONTOLOGY_PATH)")
    d.set_defaults(run=cmd_docs)

    t = sub.add_parser("token", help="make, list and revoke API tokens")
    tsub = t.add_subparsers(title="token commands")
    tc = tsub.add_parser("create", help="make a token; prints its secret once")
    tc.add_argument("--site", required=True, help="the site (tenant) whose cases the token reaches")
    tc.add_argument("--scope", required=True, nargs="+", choices=_Scopes(), help="what it may do")
    tc.add_argument("--data-dir", type=Path, help="where tokens.json lives (default: ESI_DATA_DIR or ./data)")
    tc.set_defaults(run=cmd_token_create)
    tr = tsub.add_parser("revoke", help="revoke a token by its id")
    tr.add_argument("id")
    tr.add_argument("--data-dir", type=Path)
    tr.set_defaults(run=cmd_token_revoke)
    tl = tsub.add_parser("list", help="list tokens (ids, sites, scopes; never secrets)")
    tl.add_argument("--data-dir", type=Path)
    tl.set_defaults(run=cmd_token_list)

    cc = sub.add_parser("cds-client", help="register, list and remove CDS Hooks clients (JWT issuers)")
    csub = cc.add_subparsers(title="cds-client commands")
    ca = csub.add_parser("add", help="register a client: its iss, its public JWK Set (a file) and its site")
    ca.add_argument("iss", help="the issuer (iss) its JWTs carry")
    ca.add_argument("--jwks", type=Path, required=True, help="a JSON file holding the client's public JWK Set")
    ca.add_argument("--site", required=True, help="the site (tenant) its calls are answered for")
    ca.add_argument("--jku", nargs="*", default=[], help="jku header values it may send (never fetched)")
    ca.add_argument("--data-dir", type=Path)
    ca.set_defaults(run=cmd_cds_client_add)
    cr = csub.add_parser("remove", help="remove a client; its JWTs are refused from the next call on")
    cr.add_argument("iss")
    cr.add_argument("--data-dir", type=Path)
    cr.set_defaults(run=cmd_cds_client_remove)
    cl = csub.add_parser("list", help="list the registered clients")
    cl.add_argument("--data-dir", type=Path)
    cl.set_defaults(run=cmd_cds_client_list)

    c = sub.add_parser("check", help="check the ontology: quality shapes, OWL 2 RL profile, rules")
    c.add_argument("--ontology", type=Path, help="ontology file (default: the shipped one or ESI_ONTOLOGY_PATH)")
    c.add_argument("--format", choices=("text", "json", "tsv", "md"), default="text",
                   help="report format (default: text, one line per problem and a summary)")
    c.add_argument("--fail-on", choices=("error", "warn"), default="error",
                   help="exit 1 on errors (default) or on warnings too")
    c.set_defaults(run=cmd_check)
    return parser


def cmd_pathway(args: argparse.Namespace, settings: Settings) -> int:
    from .core.kb import KnowledgeBase

    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"kgservice: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    from .core.cases import load_json

    try:
        data = load_json(raw)
    except MalformedInput as exc:
        print(f"kgservice: {args.file}: {exc.detail}", file=sys.stderr)
        return 2
    kb = KnowledgeBase.from_settings(settings)
    results = kb.process(data if isinstance(data, list) else [data])
    answers = [r.problem() if isinstance(r, Problem) else r.answer for r in results]
    failed = any(isinstance(r, Problem) for r in results)
    out = answers if isinstance(data, list) else answers[0]
    json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .server import serve

    try:
        settings = settings.with_(**{k: v for k, v in (("host", args.host), ("port", args.port),
                                                       ("data_dir", args.data_dir), ("workers", args.workers))
                                     if v is not None})
    except ValueError as exc:
        print(f"kgservice: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from .bulk import INGEST_QUADS
    from .bulk import main as load_main

    if args.data_dir is not None:
        settings = settings.with_(data_dir=args.data_dir)
    ingest = INGEST_QUADS if args.ingest_quads is None else max(1, args.ingest_quads)
    return load_main(settings, args.path, args.site, max(1, args.batch), args.workers, args.scheduler, ingest)


def cmd_reason(args: argparse.Namespace, settings: Settings) -> int:
    from .curation.upgrade import reason_stale

    if args.data_dir is not None:
        settings = settings.with_(data_dir=args.data_dir)
    try:
        done = reason_stale(settings, args.site, args.batch, args.workers, everything=args.all,
                            scheduler=args.scheduler)
    except OSError as exc:  # RocksDB's lock: one process at a time writes a store
        print(f"kgservice: cannot open the store in {settings.data_dir}: {exc}; is the service running "
              "on it? Stop it first (see the README, 'Upgrading a running service')", file=sys.stderr)
        return 2
    except ESIError as exc:  # e.g. a site name that cannot exist
        print(f"kgservice: {exc.detail}", file=sys.stderr)
        return 2
    json.dump([site.as_json() for site in done], sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 1 if any(site.rejected for site in done) else 0


def cmd_impact(args: argparse.Namespace, settings: Settings) -> int:
    from .curation.impact import impact, render

    if args.data_dir is not None:
        settings = settings.with_(data_dir=args.data_dir)
    try:
        report = impact(settings, args.proposed, args.site, stored=not args.no_store, batch_size=args.batch,
                        workers=args.workers, scheduler=args.scheduler)
    except ESIError as exc:  # an ontology that does not load, a site that does not exist
        print(f"kgservice: {exc.detail}", file=sys.stderr)
        return 2
    sys.stdout.write(render(report, args.format))
    return 1 if report.failing else 0


def cmd_docs(args: argparse.Namespace, settings: Settings) -> int:
    from .core.kb import KnowledgeBase
    from .curation.docs import write

    if args.ontology is not None:
        settings = settings.with_(ontology_path=args.ontology)
    try:
        kb = KnowledgeBase.from_settings(settings)
    except ESIError as exc:
        print(f"kgservice: {exc.detail}", file=sys.stderr)
        return 2
    for path in write(args.out, kb.ontology, kb.vocabulary):
        print(path)
    return 0


def _tokens(args: argparse.Namespace, settings: Settings) -> TokenStore:
    if args.data_dir is not None:
        settings = settings.with_(data_dir=args.data_dir)
    from .security.auth import TokenStore

    return TokenStore(settings.tokens_path)


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    try:
        token, secret = _tokens(args, settings).create(args.site, args.scope)
    except ValueError as exc:
        print(f"kgservice: {exc}", file=sys.stderr)
        return 2
    print(f"token {token.id} for site {token.site}, scopes {' '.join(token.scopes)}", file=sys.stderr)
    print("the secret is shown once; store it now:", file=sys.stderr)
    print(secret)
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    if _tokens(args, settings).revoke(args.id):
        print(f"token {args.id} revoked")
        return 0
    print(f"kgservice: no token {args.id}", file=sys.stderr)
    return 1


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    for token in _tokens(args, settings).list():
        state = f"revoked {token.revoked}" if token.revoked else "live"
        print(f"{token.id}  site={token.site}  scopes={','.join(token.scopes)}  created={token.created}  {state}")
    return 0


def _cds_clients(args: argparse.Namespace, settings: Settings) -> CdsClients:
    if args.data_dir is not None:
        settings = settings.with_(data_dir=args.data_dir)
    from .security.cdsauth import CdsClients

    return CdsClients(settings.cds_clients_path)


def cmd_cds_client_add(args: argparse.Namespace, settings: Settings) -> int:
    try:
        jwks = json.loads(args.jwks.read_text(encoding="utf-8"))
        client = _cds_clients(args, settings).add(args.iss, args.site, jwks, tuple(args.jku))
    except (OSError, ValueError) as exc:
        print(f"kgservice: {exc}", file=sys.stderr)
        return 2
    print(f"CDS client {client.iss} registered for site {client.site}, keys "
          + ", ".join(k["kid"] for k in client.jwks["keys"]))
    return 0


def cmd_cds_client_remove(args: argparse.Namespace, settings: Settings) -> int:
    if _cds_clients(args, settings).remove(args.iss):
        print(f"CDS client {args.iss} removed")
        return 0
    print(f"kgservice: no CDS client {args.iss}", file=sys.stderr)
    return 1


def cmd_cds_client_list(args: argparse.Namespace, settings: Settings) -> int:
    for client in _cds_clients(args, settings).list():
        kids = ",".join(k["kid"] for k in client.jwks["keys"])
        print(f"{client.iss}  site={client.site}  keys={kids}  jku={','.join(client.jku) or '-'}")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from .curation.quality import check_ontology

    if args.ontology is not None:
        settings = settings.with_(ontology_path=args.ontology)
    report = check_ontology(settings)
    print(report.render(args.format))
    return 1 if report.fails(args.fail_on) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
