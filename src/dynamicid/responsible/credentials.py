"""Signed C2PA content credentials (issue 37 §2), with the operator's certificate and key, through
`c2pa-python` (the Content Authenticity Initiative's own SDK; it signs offline when no timestamp authority
is given).

Each signed image's manifest says: created (`c2pa.created`) by this toolkit at its version, with the IPTC
digital source type of `provenance.py`; the model's published version (`org.dynamicid.model`); and, when the
image is watermarked, the watermark's code word as a soft binding (`c2pa.soft-binding`), so a copy whose
manifest was stripped can still be tied back to it. It names no person and embeds neither the reference
photos nor a thumbnail. Reading never fetches from the network (no remote manifests, no OCSP).

Reading also finds what a photo's owner says about training (`c2pa.training-mining`, `cawg.training-mining`),
which `collect` honours.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from dynamicid import __version__
from dynamicid.errors import ConfigError, SetupError
from dynamicid.options import option
from dynamicid.responsible.provenance import GENERATED, IPTC_SOURCE_TYPES

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install c2pa-python (a dependency of dynamicid: reinstall the project)"
SOFT_BINDING_ALG = "org.dynamicid.rivagan.32"  # the watermark's code word, 4 bytes, base64
MODEL_ASSERTION = "org.dynamicid.model"
MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# Uses a training-mining assertion may rule out; "notAllowed" on any of them opts the photo out of collection.
TRAINING_USES = ("ai_training", "ai_generative_training", "data_mining")
_OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


@dataclass(frozen=True)
class CredentialOptions:
    """The signing options `generate` and `serve` share (one set of defaults)."""

    c2pa_cert: str | None = option(
        None,
        "PEM certificate chain (the signer's certificate first, then its issuers) to sign C2PA content "
        "credentials into every image; needs --c2pa-key",
    )
    c2pa_key: str | None = option(None, "the PEM private key of --c2pa-cert (EC P-256/384/521, Ed25519 or RSA)")
    c2pa_tsa_url: str | None = option(
        None, "a timestamp authority's URL to countersign with (default: none, so signing never uses the network)"
    )

    def __post_init__(self) -> None:
        if bool(self.c2pa_cert) != bool(self.c2pa_key):
            raise ConfigError("C2PA signing needs both --c2pa-cert and --c2pa-key: give the certificate and its key")
        for name in ("c2pa_cert", "c2pa_key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{name} {path} is not a file: give the PEM file (--{name.replace('_', '-')})")

    @property
    def active(self) -> bool:
        return bool(self.c2pa_cert)


def _c2pa():
    try:
        import c2pa
    except ImportError:
        raise SetupError(f"C2PA content credentials need c2pa-python: {INSTALL_HINT}") from None
    return c2pa


def _algorithm(key: Any) -> str:
    """The C2PA signing algorithm a private key calls for."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise ConfigError(f"the C2PA key is a {type(key).__name__}: use EC P-256/384/521, Ed25519 or RSA")


class ContentSigner:
    """Signs images in place with the operator's certificate chain and key, checked once when built."""

    def __init__(self, options: CredentialOptions):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        assert options.c2pa_cert and options.c2pa_key
        self.c2pa = _c2pa()
        with open(options.c2pa_cert, "rb") as handle:
            self.chain = handle.read()
        with open(options.c2pa_key, "rb") as handle:
            self.key_pem = handle.read()
        try:
            certificates = x509.load_pem_x509_certificates(self.chain)
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"{options.c2pa_cert} or {options.c2pa_key} cannot be read as PEM ({err}): give the certificate "
                "chain and an unencrypted private key in PEM"
            ) from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        encoding = serialization.Encoding.DER
        if certificates[0].public_key().public_bytes(encoding, public) != key.public_key().public_bytes(
            encoding, public
        ):
            raise ConfigError(
                f"c2pa_key {options.c2pa_key} is not the key of the first certificate in {options.c2pa_cert}: "
                "give the signer's certificate first and its own key"
            )
        self.algorithm = _algorithm(key)
        self.tsa_url = options.c2pa_tsa_url
        names = certificates[0].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        self.issuer = str(names[0].value) if names else certificates[0].subject.rfc4514_string()
        self._trial(options)

    def _trial(self, options: CredentialOptions) -> None:
        """Signs a blank image once, so a certificate C2PA refuses is reported now, before any work."""
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="dynamicid-c2pa-") as folder:
            path = os.path.join(folder, "trial.png")
            Image.new("RGB", (16, 16)).save(path)
            try:
                self.sign(path, None)
            except self.c2pa.C2paError as err:
                raise ConfigError(
                    f"C2PA refuses to sign with {options.c2pa_cert}: {err}. A C2PA signer needs a certificate "
                    "issued by a CA (not self-signed) with digitalSignature key usage, an extended key usage such "
                    "as emailProtection or documentSigning, and an authority key identifier"
                ) from None

    @classmethod
    def build(cls, options: CredentialOptions | None) -> ContentSigner | None:
        return cls(options) if options is not None and options.active else None

    def sign(self, path: str, model_version: str | None, soft_binding: str | None = None, kind: str = GENERATED):
        """Signs the PNG or JPEG at `path` in place (written beside it, then renamed over it: never half
        written). `soft_binding` is the watermark's code word (8 hex digits) when the image carries it."""
        mime = MIME_TYPES.get(os.path.splitext(path)[1].lower())
        if mime is None:
            raise ConfigError(f"{path}: C2PA signing takes PNG, JPEG or WebP files")
        c2pa = self.c2pa
        info = c2pa.C2paSignerInfo(
            self.algorithm.encode(), self.chain, self.key_pem, self.tsa_url.encode() if self.tsa_url else None
        )
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}, **_OFFLINE})
        definition = manifest(os.path.basename(path), model_version, soft_binding, kind)
        builder = c2pa.Builder(json.dumps(definition), context=context)
        folder = os.path.dirname(os.path.abspath(path))
        handle, temporary = tempfile.mkstemp(prefix=".signing-", suffix=os.path.splitext(path)[1], dir=folder)
        os.close(handle)
        try:
            with c2pa.Signer.from_info(info) as signer, open(path, "rb") as source, open(temporary, "wb") as target:
                builder.sign(signer, mime, source, target)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


def manifest(title: str, model_version: str | None, soft_binding: str | None, kind: str = GENERATED) -> dict:
    """The manifest definition of one generated image."""
    agent = {"name": "dynamicid", "version": __version__}
    assertions: list[dict[str, Any]] = [
        {
            "label": "c2pa.actions",
            "data": {
                "actions": [
                    {"action": "c2pa.created", "digitalSourceType": IPTC_SOURCE_TYPES + kind, "softwareAgent": agent}
                ]
            },
        },
        {"label": MODEL_ASSERTION, "data": {"model_version": model_version or "unknown"}},
    ]
    if soft_binding:
        value = base64.b64encode(bytes.fromhex(soft_binding)).decode("ascii")
        assertions.append(
            {"label": "c2pa.soft-binding", "data": {"alg": SOFT_BINDING_ALG, "blocks": [{"scope": {}, "value": value}]}}
        )
    return {"claim_generator_info": [agent], "title": title, "assertions": assertions}


@dataclass(frozen=True)
class CredentialReading:
    state: str  # "valid", "invalid" or "none"
    trusted: bool | None  # whether the signer chains to a given trust anchor; None when no anchor was given
    issuer: str | None
    model_version: str | None
    soft_binding: str | None  # the watermark code word the manifest binds, 8 hex digits
    training: dict[str, str]  # a training-mining assertion's uses, e.g. {"c2pa.ai_training": "notAllowed"}


NO_MANIFEST = CredentialReading("none", None, None, None, None, {})


def read_credentials(source: str | BinaryIO, mime: str | None = None, trust_anchors: str | None = None):
    """The C2PA state of an image file: a path, or an open binary file with its MIME type (a name without
    the image's extension). A manifest that fails validation, or that cannot be parsed, is "invalid"; no
    manifest is "none". Never uses the network."""
    c2pa = _c2pa()
    settings: dict[str, Any] = dict(_OFFLINE)
    if trust_anchors:
        with open(trust_anchors, encoding="utf-8") as handle:
            settings["trust"] = {"trust_anchors": handle.read()}
    context = c2pa.Context.from_dict(settings)
    try:
        if isinstance(source, str):
            reader = c2pa.Reader.try_create(source, context=context)
        else:
            reader = c2pa.Reader.try_create(mime or "image/jpeg", source, context=context)
    except c2pa.C2paError as err:
        logger.info("C2PA manifest not readable: %s", err)
        return CredentialReading("invalid", None, None, None, None, {})
    if reader is None:
        return NO_MANIFEST
    with reader:
        state = reader.get_validation_state() or "Invalid"
        active = reader.get_active_manifest() or {}
    return _reading(state, active, trust_anchors is not None)


def _reading(state: str, active: dict, anchored: bool) -> CredentialReading:
    assertions = {item.get("label", ""): item.get("data") or {} for item in active.get("assertions", [])}
    binding = assertions.get("c2pa.soft-binding", {})
    word = None
    if binding.get("alg") == SOFT_BINDING_ALG and binding.get("blocks"):
        try:
            word = base64.b64decode(binding["blocks"][0]["value"]).hex()
        except (KeyError, TypeError, ValueError):
            word = None
    training: dict[str, str] = {}
    for label in ("c2pa.training-mining", "cawg.training-mining"):
        for use, entry in (assertions.get(label, {}).get("entries") or {}).items():
            if isinstance(entry, dict):
                training[use] = str(entry.get("use", ""))
    issuer = (active.get("signature_info") or {}).get("common_name")
    return CredentialReading(
        "valid" if state in ("Valid", "Trusted") else "invalid",
        (state == "Trusted") if anchored else None,
        issuer,
        assertions.get(MODEL_ASSERTION, {}).get("model_version"),
        word,
        training,
    )


def training_refused(reading: CredentialReading) -> str | None:
    """The use a photo's credentials rule out for training ("c2pa.ai_training: notAllowed"), or None."""
    for use, value in reading.training.items():
        if value == "notAllowed" and use.rpartition(".")[2] in TRAINING_USES:
            return f"{use}: notAllowed"
    return None
