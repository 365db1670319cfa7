"""Consent for the people depicted (issue 37 §4): a registry of the people who agreed to be generated, and a
deny list of faces that must never be.

A registry is a folder with one folder per person: their photos, and `consent.json`:

    {"who": "Barack Obama", "granted": "2026-11-02", "scope": ["generation"], "expires": "2027-11-02"}

`scope` lists what the person agreed to (`generation`, or `all`); `expires` may be null. A deny list is a
folder of photos, at any depth, one face each. A reference photo's face is compared with every enrolled and
denied face by the identity embedder that analyses references, at that embedder's verification point
(`faces/identity_thresholds.py`: dlib's published distance 0.6 for dlib-resnet), the threshold prep uses for
"the same person". A refusal is logged with the photo's content hash, never the photo.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from dynamicid.errors import ConfigError, InputError
from dynamicid.options import option

logger = logging.getLogger(__name__)

CONSENT_FILE = "consent.json"
GENERATION_SCOPES = {"generation", "all"}
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ConsentRefused(InputError):
    """A reference photo that consent rules out: a denied face, or (under --require-consent) no consent."""


@dataclass(frozen=True)
class ConsentOptions:
    """The consent options `generate` and `serve` share (one set of defaults)."""

    consent_registry: str | None = option(
        None,
        "folder of the people who agreed to be generated: PERSON/consent.json (who, granted, scope, expires) and "
        "PERSON's photos",
    )
    require_consent: bool = option(
        False,
        "refuse a reference photo whose face matches no registered person with unexpired consent to generation "
        "(needs --consent-registry)",
    )
    deny: str | None = option(
        None, "folder of photos of people who must never be generated: refused in every mode, the page included"
    )

    def __post_init__(self) -> None:
        if self.require_consent and not self.consent_registry:
            raise ConfigError("require_consent needs consent_registry: give --consent-registry FOLDER")
        for name in ("consent_registry", "deny"):
            folder = getattr(self, name)
            if folder is not None and not os.path.isdir(folder):
                raise ConfigError(f"{name} {folder} is not a folder: give the folder of photos")

    @property
    def active(self) -> bool:
        return bool(self.consent_registry or self.deny)


@dataclass(frozen=True)
class ConsentRecord:
    who: str
    granted: dt.date
    scope: tuple[str, ...]
    expires: dt.date | None

    def valid_on(self, day: dt.date) -> bool:
        return (
            self.granted <= day
            and (self.expires is None or day <= self.expires)
            and bool(GENERATION_SCOPES & set(self.scope))
        )


def read_record(path: str) -> ConsentRecord:
    """A consent.json, checked field by field; a bad one is a ConfigError naming the file and the field."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} cannot be read as JSON ({err}); see the README's consent section") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold an object with who, granted, scope and expires")

    def day(key: str, required: bool) -> dt.date | None:
        value = raw.get(key)
        if value is None and not required:
            return None
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise ConfigError(f"{path}: {key} must be a date as YYYY-MM-DD, not {value!r}") from None

    if not isinstance(raw.get("who"), str) or not raw["who"].strip():
        raise ConfigError(f"{path}: who must name the person who agreed")
    granted, expires = day("granted", True), day("expires", False)
    scope = raw.get("scope")
    scope = [scope] if isinstance(scope, str) else scope
    if not isinstance(scope, list) or not all(isinstance(item, str) for item in scope):
        raise ConfigError(f'{path}: scope must be a list of uses, e.g. ["generation"]')
    return ConsentRecord(raw["who"], granted, tuple(scope), expires)  # type: ignore[arg-type]


@dataclass
class _Enrolled:
    name: str
    vectors: np.ndarray  # (k, d) unit rows
    record: ConsentRecord | None = None  # None on the deny list


@dataclass
class ConsentGate:
    """Checks reference faces against the registry and the deny list; built once, used for every request."""

    options: ConsentOptions
    threshold: float
    enrolled: list[_Enrolled] = field(default_factory=list)
    denied: list[_Enrolled] = field(default_factory=list)

    @classmethod
    def build(cls, options: ConsentOptions, analyzer, threshold: float | None = None) -> ConsentGate | None:
        """The gate for `options`, its photos embedded by `analyzer` (None when no option asks for one)."""
        if not options.active:
            return None
        if threshold is None:
            from dynamicid.faces.identity_thresholds import thresholds_for

            threshold = thresholds_for(analyzer.config.embedder).same_person
        gate = cls(options, threshold)
        if options.consent_registry:
            gate.enrolled = _registry(options.consent_registry, analyzer)
        if options.deny:
            gate.denied = _deny_list(options.deny, analyzer)
        logger.info(
            "consent: %d registered people, %d denied faces, match at cosine %.3f",
            len(gate.enrolled),
            len(gate.denied),
            threshold,
        )
        return gate

    def check(self, embedding, what: str, photo_hash: str = "", today: dt.date | None = None) -> str | None:
        """Raises ConsentRefused for a denied face, or for a face without consent under --require-consent.
        Returns who consented (the record's `who`) when the face matches a registered person."""
        vector = _unit(np.asarray(embedding, np.float64))
        for entry in self.denied:
            if _best(entry, vector) >= self.threshold:
                self._refuse(what, photo_hash, "the face is on the deny list of people who must never be generated")
        day = today or dt.date.today()
        matches = [(score, e) for e in self.enrolled if (score := _best(e, vector)) >= self.threshold]
        valid = [(score, e) for score, e in matches if e.record is not None and e.record.valid_on(day)]
        if valid:
            return max(valid, key=lambda pair: pair[0])[1].record.who  # type: ignore[union-attr]
        if self.options.require_consent:
            why = (
                f"{matches[0][1].name}'s consent does not cover generation today (expired, not yet granted, or "
                "another scope)"
                if matches
                else "the face matches nobody in the consent registry"
            )
            self._refuse(what, photo_hash, why)
        return None

    def _refuse(self, what: str, photo_hash: str, why: str) -> None:
        logger.warning("consent: refused %s (content sha256 %s): %s", what, photo_hash[:16] or "unknown", why)
        raise ConsentRefused(f"{what} is refused: {why}. Generation needs the consent of the person depicted.")


def photo_hash(source) -> str:
    """The content hash a refusal is logged under: of the file, or of an array's bytes."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    return hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()


def _registry(folder: str, analyzer) -> list[_Enrolled]:
    people = []
    for name in sorted(os.listdir(folder)):
        person = os.path.join(folder, name)
        if not os.path.isdir(person) or name.startswith((".", "_")):
            continue
        record_path = os.path.join(person, CONSENT_FILE)
        if not os.path.isfile(record_path):
            raise ConfigError(f"{person} has no {CONSENT_FILE}: every registered person needs their consent record")
        record = read_record(record_path)
        vectors = [v for p in _photos(person) if (v := _embed(p, analyzer, False)) is not None]
        if not vectors:
            logger.warning("consent: %s has no photo with one clear face; nobody matches them", person)
            continue
        people.append(_Enrolled(name, np.concatenate(vectors), record))
    return people


def _deny_list(folder: str, analyzer) -> list[_Enrolled]:
    denied = []
    for path in _photos(folder):
        vector = _embed(path, analyzer, strict=True)
        assert vector is not None  # strict: a photo without a face raised
        denied.append(_Enrolled(os.path.relpath(path, folder), vector))
    return denied


def _photos(folder: str) -> list[str]:
    return sorted(
        os.path.join(root, name)
        for root, dirs, names in os.walk(folder)
        for name in names
        if name.lower().endswith(PHOTO_SUFFIXES) and not name.startswith(".")
    )


def _embed(path: str, analyzer, strict: bool) -> np.ndarray | None:
    """The unit embedding of the photo's one largest face, as a (1, d) row; a photo without a usable face is
    an error on the deny list (a gap there would let the person through) and a warning in the registry."""
    from dynamicid.imagefile import Rejected, load_image

    try:
        faces = analyzer.analyze(load_image(path).rgb, max_faces=1)
    except Rejected as rejection:
        faces, problem = [], f"{rejection.reason}: {rejection.message}"
    else:
        problem = "no face was detected"
    if not faces:
        if strict:
            raise ConfigError(f"deny-list photo {path}: {problem}; replace it with a photo of one clear face")
        logger.warning("consent: registry photo %s skipped: %s", path, problem)
        return None
    return _unit(np.asarray(faces[0].embedding, np.float64))[None]


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _best(entry: _Enrolled, vector: np.ndarray) -> float:
    return float((entry.vectors @ vector).max())
