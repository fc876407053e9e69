"""`cmem serve`: every deployed task answered over HTTP, one backbone pass per dynamic batch.

A composition root beside the CLI: it reads the store, holds one loaded backbone and an immutable
snapshot of the served adapters, and calls the core. Modules, in the order a request meets them:
`api` (routes, limits, errors) -> `requests` (parse, resolve tasks, decode) -> `batcher` (dynamic
batching off the event loop) -> `engine` (one reuse pass per batch); `deployment` follows the
store's alias and swaps `snapshot`s; `server` runs it all under uvicorn.
"""

from .config import ServeConfig
from .server import run

__all__ = ["ServeConfig", "run"]
