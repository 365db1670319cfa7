"""Typed configuration of `dynamicid serve`."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback only, unless the operator opens it
    port: int = 7860
    base_model: str | None = None  # folders or Hugging Face repo ids, as for `generate`; None: the defaults
    weights: str | None = None
    clip_image_encoder: str | None = None
    tiny: bool = False  # tiny random models made at start: every control works, images are noise
    auth: str | None = None  # "user:password", or a bare token that any user name may use as password
    max_upload_mb: int = 20
    max_image_pixels: int = 40_000_000
    concurrency: int = 1  # generations at once on the one pipeline (one GPU)
    queue_size: int = 64  # requests waiting at most; more are refused
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 1..65535, not {self.port}")
        if self.concurrency < 1 or self.queue_size < 1 or self.max_upload_mb < 1:
            raise ConfigError("--concurrency, --queue-size and --max-upload-mb must be at least 1")
        if self.auth is not None and not self.auth.strip(":"):
            raise ConfigError("--auth needs user:password or a token")

    def check_auth(self, username: str, password: str) -> bool:
        """Gradio's login check: the pair for "user:password", any user name with the token otherwise."""
        if self.auth is None:
            return True
        user, colon, secret = self.auth.partition(":")
        return (username == user and password == secret) if colon else password == self.auth
