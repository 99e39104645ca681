"""Settings: one typed object, read from the environment (``ESI_*``) or given by the caller."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

ENGINES = ("compiled", "reasonable", "owlrl")
SHACL_ENGINES = ("builtin", "pyshacl")
STORES = ("oxigraph", "sparql")


def _resource_dir(name: str) -> Path:
    """Where the shipped ``ontology/``, ``shapes/`` or ``queries/`` folder is.

    A wheel carries them inside the package (``kgservice/_data``); a source tree or an
    editable install has them beside the package.
    """
    bundled = Path(str(resources.files("kgservice"))) / "_data" / name
    if bundled.is_dir():
        return bundled
    return Path(__file__).resolve().parent.parent / name


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. ``Settings.from_env()`` reads ``ESI_<FIELD>``."""

    ontology_path: Path = field(default_factory=lambda: _resource_dir("ontology") / "esi.ttl")
    shapes_dir: Path = field(default_factory=lambda: _resource_dir("shapes"))
    queries_dir: Path = field(default_factory=lambda: _resource_dir("queries"))
    engine: str = "compiled"
    shacl_engine: str = "builtin"
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 8
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_body_bytes: int = 1_000_000
    max_case_triples: int = 2_000
    max_case_list_items: int = 50
    max_batch: int = 1_000
    page_size: int = 50
    query_timeout_s: float = 10.0
    query_max_rows: int = 10_000
    query_max_length: int = 65_536
    query_max_response_bytes: int = 32 * 1024 * 1024
    query_max_memory_mb: int = 512
    base_iri: str = "https://w3id.org/esi-kg/"
    reasoning_timeout_s: float = 10.0
    reasoning_workers: int | None = None
    reasoning_batch: int = 32  # at most this many waiting requests are reasoned together
    auth_required: bool = True
    cors_origins: str = ""
    audit_log: Path | None = None
    audit_fsync: bool = False
    store: str = "oxigraph"
    sparql_endpoint: str | None = None
    sparql_update_endpoint: str | None = None
    sparql_gsp_endpoint: str | None = None
    sparql_username: str | None = None
    sparql_password: str | None = None
    public_url: str = ""
    cds_max_token_s: int = 300
    cds_replay_cache: int = 100_000

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.data_dir / "audit.jsonl"

    @property
    def cache_dir(self) -> Path | None:
        """Where derived files (the ontology's closure per version) are kept; None: not kept."""
        return self.data_dir / "cache" if self.data_dir.exists() else None

    @property
    def tokens_path(self) -> Path:
        return self.data_dir / "tokens.json"

    @property
    def base_url(self) -> str:
        """The service's own URL, as clients address it: ``ESI_PUBLIC_URL``, else host and port."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def cds_clients_path(self) -> Path:
        return self.data_dir / "cds-clients.json"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.shacl_engine not in SHACL_ENGINES:
            raise ValueError(f"shacl_engine must be one of {', '.join(SHACL_ENGINES)}, not {self.shacl_engine!r}")
        if self.store not in STORES:
            raise ValueError(f"store must be one of {', '.join(STORES)}, not {self.store!r}")
        if self.workers > 1 and self.store != "sparql":
            raise ValueError(f"{self.workers} API workers need ESI_STORE=sparql: the embedded Oxigraph store "
                             "(RocksDB) allows one writing process, so it is served by one worker, which answers "
                             "with ESI_THREADS threads and reasons on every core")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.store == "sparql" and not self.sparql_endpoint:
            raise ValueError("ESI_STORE=sparql needs ESI_SPARQL_ENDPOINT (the store's SPARQL query endpoint)")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"ESI_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.type, raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _coerce(kind: Any, raw: str, name: str) -> Any:
    kind = str(kind).replace(" | None", "")
    try:
        if kind.startswith("Path"):
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ValueError(f"ESI_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
