"""Typed configuration of `dynamicid serve`. The command line's options are made from these fields
(`dynamicid.options.add_options`): each default and help text is written here once."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.generation.config import DTYPES
from dynamicid.generation.request import RequestLimits, check_identities_option, retries_option
from dynamicid.login import auth_option, check_auth_option, host_option, login_ok, port_option
from dynamicid.options import check_limits, option
from dynamicid.responsible.consent import ConsentOptions
from dynamicid.responsible.credentials import CredentialOptions
from dynamicid.responsible.safety import safety_option
from dynamicid.responsible.watermark import watermark_option


@dataclass(frozen=True)
class ServeConfig:
    host: str = host_option()
    port: int = port_option(7860)
    base_model: str | None = option(
        None, "Stable Diffusion 1.5: a folder or a Hugging Face repo id (default: as generate)"
    )
    weights: str | None = option(None, "DynamicID weights: a folder or a repo id (default: the authors')")
    clip_image_encoder: str | None = option(None, "CLIP ViT-H/14 image encoder: a folder or a repo id")
    tiny: bool = option(False, "run on tiny random models made at start: every control works, images are noise")
    auth: str | None = auth_option()
    max_upload_mb: int = option(20, "largest photo upload, in MB", limits=(1, 10_000))
    max_image_pixels: int = option(40_000_000, "largest photo, in pixels (width x height)", limits=(4096, 2**32))
    limits: RequestLimits = option(factory=RequestLimits)  # as generate's
    consent: ConsentOptions = option(factory=ConsentOptions)  # as generate's
    credentials: CredentialOptions = option(factory=CredentialOptions)  # as generate's
    watermark: bool = watermark_option()
    check_identities: bool = check_identities_option(True)  # on: users see who came out wrong
    retries: int = retries_option(2)
    safety_filter: str = safety_option()
    keep_files_hours: float = option(
        24.0,
        "uploads and generated images are deleted after this many hours (all of them when the server stops; they "
        "live in a folder of the server's own that only its user can read)",
        limits=(0.01, 8760.0),
    )
    concurrency: int = option(
        1, "generations at once (one pipeline on one GPU: 1); the rest wait in the queue", limits=(1, 64)
    )
    queue_size: int = option(64, "requests waiting at most; more are refused", limits=(1, 100_000))
    reload: bool = option(
        True,
        "keep serving the model loaded at start, even when a new version is published to --weights (a folder is "
        "checked before each request, a Hub repo every --reload-every seconds)",
    )
    reload_every: float = option(
        60.0, "seconds between two checks of a Hub repo for a new version", limits=(1.0, 86400.0)
    )
    device: str | None = option(None, "torch device (default: cuda when there is a GPU, else cpu; as generate)")
    dtype: str | None = option(
        None, "weights' precision (default: float16 on a GPU, else float32; as generate)", choices=DTYPES
    )

    def __post_init__(self):
        check_limits(self)
        check_auth_option(self.auth)

    def check_auth(self, username: str, password: str) -> bool:
        return login_ok(self.auth, username, password)
