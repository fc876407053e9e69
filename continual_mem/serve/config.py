"""What `cmem serve` is told: where to listen, how to batch, what to refuse."""

from __future__ import annotations

import os
from dataclasses import dataclass

from continual_mem.images import MAX_PIXELS

RELOAD_TOKEN_ENV = "CMEM_RELOAD_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    """Server settings; `check` refuses values that cannot work, naming the option."""

    alias: str = "production"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    poll_s: float = 1.0
    max_request_bytes: int = 20 * 1024 * 1024
    max_pixels: int = MAX_PIXELS
    max_images_per_request: int = 64
    max_top_k: int = 100
    pinned_cache: int = 32
    shutdown_timeout_s: float = 30.0
    log_level: str = "info"

    def check(self) -> None:
        positive = {
            "--port": self.port,
            "--max-batch": self.max_batch,
            "--max-queue": self.max_queue,
            "--max-request-bytes": self.max_request_bytes,
            "--max-pixels": self.max_pixels,
            "--max-images": self.max_images_per_request,
        }
        for option, value in positive.items():
            if value < 1:
                raise ValueError(f"{option} must be at least 1, got {value}")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if not 0.0 <= self.max_wait_ms <= 10_000.0:
            raise ValueError(f"--max-wait-ms must be in [0, 10000], got {self.max_wait_ms}")
        if not 0.05 <= self.poll_s <= 3600.0:
            raise ValueError(f"--poll-s must be in [0.05, 3600], got {self.poll_s}")
        if self.max_queue < self.max_batch:
            raise ValueError(f"--max-queue ({self.max_queue}) must be at least --max-batch ({self.max_batch})")

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0


def reload_token() -> str | None:
    """The token `POST /v1/reload` needs; without it set, the endpoint does not exist."""
    token = os.environ.get(RELOAD_TOKEN_ENV, "")
    return token or None
