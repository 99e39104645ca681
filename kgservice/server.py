"""``kgservice serve``: the API under gunicorn, a production WSGI server.

One worker process owns the Oxigraph stores (RocksDB allows a single writer process) and
answers with several threads, each given a request only once it has been read whole
(``kgservice/httpworker.py``: slow clients hold no thread); with a remote store
(``ESI_STORE=sparql``) ``--workers N`` starts N, which share nothing but the store (and this
host's tokens and audit log); the CPU-bound pipeline runs in a pool of reasoning processes
(one per core unless ``ESI_REASONING_WORKERS`` says otherwise), so every core is used.
The network guard is installed in the worker and in every reasoning process. Flask's
development server and debugger are never used.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from gunicorn.app.base import BaseApplication

from .config import Settings


class ESIServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "worker_class": "kgservice.httpworker.BufferedThreadWorker",  # slow clients hold no thread
            "threads": s.threads,
            "timeout": max(30, int(s.query_timeout_s * 3)),
            "graceful_timeout": 10,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": "info",
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            "preload_app": False,
            "control_socket_disable": True,
            "worker_exit": _worker_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """The app, in gunicorn's worker. The reasoning workers come first: one process forked
        now loads the knowledge base and forks the others from it, on the second core, while
        this one imports the web stack and opens the store; this process's own knowledge base
        (for everything but reasoning) loads after the app is up."""
        _log_to_gunicorn()
        settings = self.settings
        if settings.reasoning_workers is None:  # the cores, shared by the API workers
            settings = settings.with_(reasoning_workers=max(1, (os.cpu_count() or 2) // settings.workers))
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the workers keep the ontology's closure there
        pool = None
        if settings.reasoning_workers:
            from .workers import ReasoningPool

            pool = ReasoningPool(settings, settings.reasoning_workers, guard=True, zygote=True)
        from .api import create_app
        from .security.guard import install_network_guard
        from .service import Service

        allow = []
        if settings.store == "sparql":  # the server itself sends the queries to the remote store
            from .stores.sparqlclient import store_addresses

            allow = store_addresses(settings)
        install_network_guard(allow)  # from here on, nothing in this process may connect out but to the store
        try:
            service = Service(settings, guard=True, pool=pool)
            app = create_app(settings, service=service)
            if pool is not None:
                pool.wait_ready()  # a worker that cannot start (no sandbox) stops the server here
        except BaseException:
            if pool is not None:
                pool.close()
            raise
        threading.Thread(target=service.load_kb, name="knowledge-base", daemon=True).start()
        return app


def _worker_exit(arbiter: Any, worker: Any) -> None:
    """gunicorn's worker is ending: stop its reasoning workers (each removes its files) and log
    how they were batched."""
    app = getattr(worker, "wsgi", None)
    service = app.extensions.get("esi") if app is not None and hasattr(app, "extensions") else None
    pool = getattr(service, "pool", None)
    if pool is not None:
        stats = pool.stats()
        logging.getLogger("kgservice").info(
            "reasoning pool: %d cases in %d batches, by size %s; %d workers replaced", stats["cases"],
            stats["batches"], json.dumps(stats["batch_sizes"]), stats["restarts"])
        pool.close()


def _log_to_gunicorn() -> None:
    """The service's own log lines (every 5xx with its traceback) go to gunicorn's error log."""
    errors = logging.getLogger("gunicorn.error")
    ours = logging.getLogger("kgservice")
    ours.handlers = list(errors.handlers)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def serve(settings: Settings) -> None:
    ESIServer(settings).run()
