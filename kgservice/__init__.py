"""ESI-KG: a knowledge graph of what comes after a failed epidural steroid injection."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("esi-kg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
