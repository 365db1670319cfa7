"""Typed configuration of `dynamicid prep`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from dynamicid.errors import ConfigError
from dynamicid.faces.analyzer import FaceAnalysisConfig, FaceRules
from dynamicid.faces.backends import available
from dynamicid.imagefile import ImageRules
from dynamicid.login import auth_option, check_auth_option, host_option, port_option
from dynamicid.options import check_limits, option

MULTI_FACE_POLICIES = ("largest", "skip", "all")
LAYOUTS = ("by-identity", "flat", "cluster")


@dataclass(frozen=True)
class PrepConfig:
    """`dynamicid prep INPUT OUTPUT`: every field is an option of the command, and a key of its --config file."""

    input: str = option(
        help="folder of photos (searched recursively), or any path Spark can read (hdfs://, s3a://)",
        positional="optional",
    )
    output: str = option(
        help="output folder (local, or a filesystem shared by all Spark workers)", positional="optional"
    )
    layout: str = option(
        "by-identity",
        "by-identity: the first-level subfolder names the person (faces unlike the rest of their folder are "
        "flagged as identity_outlier); flat: no identities; cluster: unlabelled photos, grouped into people "
        "(person-0001, ...) by their identity embeddings",
        choices=LAYOUTS,
    )
    multi_face: str = option(
        "largest",
        "several faces in one photo: keep the largest, skip the photo, or keep every face",
        choices=MULTI_FACE_POLICIES,
    )
    faces: FaceAnalysisConfig = option(factory=FaceAnalysisConfig)
    captioner: str = option("measured", lambda: f"captioner ({', '.join(available('captioner'))})")
    captioner_model: str | None = option(
        None, "model folder for the captioner (internvl: a transformers-format folder such as InternVL3-2B-hf)"
    )
    given_captions: bool = option(
        True,
        "caption every face with --captioner, even photos whose URL list gave a caption (collect's manifest "
        "in INPUT/_collect; by default that caption is used)",
    )
    caption_static_cache: bool = option(
        False,
        "a static KV cache for a model captioner's generation, compiled by transformers on a GPU (the same "
        "captions; faster once warm, for large datasets)",
    )
    caption_max_tokens: int = option(64, "new tokens a model captioner may write", limits=(1, 4096))
    caption_batch_size: int = option(
        16, "faces per captioning batch on the GPU (a task's faces are captioned together)", limits=(1, 4096)
    )
    images: ImageRules = option(factory=ImageRules)
    face_rules: FaceRules = option(factory=FaceRules)
    jpeg_quality: int = option(95, "JPEG quality of the aligned faces", limits=(1, 100))
    master: str | None = option(None, "Spark master, e.g. spark://host:7077 (default: local[*], or spark-submit's)")
    images_per_partition: int = option(
        32,
        "images per Spark task (each task costs ~150 ms of scheduling; at least 4 tasks per core are made)",
        limits=(1, 1_000_000),
    )
    split: str = option(
        "1,0,0",
        "train,val,test shares of the identities: every face of a person lands in one split (a seeded hash of "
        "the identity), so evaluation never sees a training identity; e.g. 0.9,0.05,0.05",
    )
    split_seed: int = option(0, "seed of the split's hash", limits=(0, 2**31 - 1))
    same_person_cosine: float | None = option(
        None,
        "cosine of a face and a person's other faces at or above which it is that person: strangers in labelled "
        "folders, a photo under two people, new faces joining earlier people (default: the embedder's published "
        "verification point, see faces/identity_thresholds.py)",
        limits=(-1, 1),
    )
    cluster_cosine: float | None = option(
        None,
        "cosine at or above which two unlabelled faces are joined in the cluster layout's graph; stricter than "
        "--same-person-cosine, as one wrong edge merges two people (default: the embedder's clustering point)",
        limits=(-1, 1),
    )
    near_copy_cosine: float | None = option(
        None,
        "cosine at or above which two faces with close face hashes are one photo cropped (default: the "
        "embedder's measured value)",
        limits=(-1, 1),
    )
    contact_sheet_faces: int = option(48, "faces shown on contact_sheet.png", limits=(0, 10_000))
    progress: bool = option(True, "no progress bar")

    def __post_init__(self):
        if self.multi_face not in MULTI_FACE_POLICIES:
            raise ConfigError(f"multi_face must be one of {', '.join(MULTI_FACE_POLICIES)}, not {self.multi_face!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        check_limits(self)
        from dynamicid.prep.curate import parse_split

        if parse_split(self.split) is None:
            raise ConfigError(
                f"split (--split) must be three shares train,val,test from 0 to 1 summing to 1, such as "
                f"0.9,0.05,0.05, not {self.split!r}"
            )
        if self.faces.aligned_size % 8:
            raise ConfigError(f"aligned_size must be a multiple of 8, at least 64, not {self.faces.aligned_size}")

    def output_affecting(self) -> dict:
        """Everything that changes what is written for an image; paths and engine settings excluded."""
        return {
            "faces": self.faces.identity(),
            "multi_face": self.multi_face,
            # The URL list's captions are used by default; turning that off is a change (and keeps old hashes).
            "captioner": [self.captioner, self.captioner_model, self.caption_max_tokens]
            + ([] if self.given_captions else ["captioner-only"]),
            "validation": asdict(self.images) | asdict(self.face_rules),  # one key: hashes stay valid
            "jpeg_quality": self.jpeg_quality,
            "format": 2,  # 2: the manifest holds the embedding and the face hash
        }

    def captioner_options(self) -> dict:
        return {
            "max_new_tokens": self.caption_max_tokens,
            "batch_size": self.caption_batch_size,
            "static_cache": self.caption_static_cache,
        }

    def config_hash(self) -> str:
        blob = json.dumps(self.output_affecting(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ReviewConfig:
    """`dynamicid review DATASET`: a curator's decisions on the dataset's people (`prep.review`)."""

    dataset: str = option(help="a finished prep OUTPUT folder", positional=True)
    merge: tuple[str, ...] | None = option(
        None, help="one person: OTHER's faces, now and in later runs, become INTO's", nargs=2, metavar=("INTO", "OTHER")
    )
    rename: tuple[str, ...] | None = option(
        None, help="give a person a new name (their split stays)", nargs=2, metavar=("OLD", "NEW")
    )
    move: list[str] = option(
        factory=list,
        append=True,
        help="a face to put with --into: a photo's relative_path (all its faces) or SHA256:FACE; once per face",
        metavar="FACE",
    )
    into: str | None = option(
        None, help="the person --move puts the faces with: an existing or a new name", metavar="PERSON"
    )
    reject: list[str] = option(
        factory=list,
        append=True,
        help="a face (relative_path or SHA256:FACE) or a person to leave out; once each",
        metavar="ITEM",
    )
    reason: str | None = option(None, help="why (--reject), kept in the log")
    same: tuple[str, ...] | None = option(
        None, help="a suggested pair is one person (a merge into A)", nargs=2, metavar=("A", "B")
    )
    different: tuple[str, ...] | None = option(
        None, help="a suggested pair are different people: never suggested again", nargs=2, metavar=("A", "B")
    )
    list_suggestions: bool = option(
        False, help="print the people (faces per split), the suggested merges closest first, the suspected strangers"
    )
    who: str = option("", help="who decides, for the log (default: the login name; on the page: the login)")
    host: str = host_option()
    port: int = port_option(7861)
    auth: str | None = auth_option()

    def __post_init__(self) -> None:
        check_limits(self)
        check_auth_option(self.auth)
        if bool(self.move) != bool(self.into):
            raise ConfigError("--move FACE and --into PERSON go together: name the faces and the person they join")
