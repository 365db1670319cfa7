"""Models by local folder or by Hugging Face repo id, resolved through `huggingface_hub` into its normal
cache (so `HF_HUB_OFFLINE=1` and a filled cache work without a network, and `HF_ENDPOINT` picks the Hub).

A reference is a local folder when one exists at that path; otherwise `org/name[/sub/folder]` names a
repo and, after the first two parts, a folder inside it. Every failure is a `HubError` that names the
reference and says what to do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass, field

from dynamicid.errors import ModelError, first_line

logger = logging.getLogger(__name__)


class HubError(ModelError):
    """A model reference that is neither a local folder nor a repo the Hub (or its cache) has."""


class MissingFiles(HubError):
    """A repo that lacks files a part needs; `missing` names the patterns nothing matched."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class Source:
    """Where one model comes from by default, and which of its files are needed."""

    repo: str
    subfolder: str | None = None
    patterns: tuple[str, ...] | None = None  # None: the whole repo (or subfolder)
    licence: str = ""

    @property
    def reference(self) -> str:
        return f"{self.repo}/{self.subfolder}" if self.subfolder else self.repo


def base_model_patterns(variant: str | None) -> tuple[str, ...]:
    """The files of an SD1.5-layout repo that the pipeline reads, in one precision."""
    suffix = f".{variant}" if variant else ""
    return (
        "model_index.json",
        "scheduler/*",
        "tokenizer/*",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        f"unet/diffusion_pytorch_model{suffix}.safetensors",
        f"vae/diffusion_pytorch_model{suffix}.safetensors",
        f"text_encoder/model{suffix}.safetensors",
    )


DEFAULTS = {
    "base_model": Source("stable-diffusion-v1-5/stable-diffusion-v1-5", licence="CreativeML OpenRAIL-M"),
    "clip_image_encoder": Source(
        "h94/IP-Adapter",
        "models/image_encoder",
        ("models/image_encoder/*.json", "models/image_encoder/*.safetensors"),
        licence="Apache-2.0",
    ),
    "weights": Source(
        "meteorite2023/DynamicID",
        patterns=("*SAA.bin", "*IMR.bin", "*key_point_encoder.bin"),
        licence="set by the authors: see the repo's model card",
    ),
}
# InsightFace publishes buffalo_l as a release asset on GitHub, not on the Hub; its models are for
# non-commercial research only.
BUFFALO_L_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
BUFFALO_L_FILES = ("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx")


def split_reference(reference: str) -> tuple[str, str | None]:
    """`org/name/sub/folder` -> ("org/name", "sub/folder")."""
    parts = reference.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise HubError(
            f"{reference!r} is neither a folder on this machine nor a Hugging Face repo id "
            "(org/name, optionally followed by /sub/folder)"
        )
    if any(part in ("", ".", "..") for part in parts[2:]):
        raise HubError(
            f"{reference!r}: a repo id's subfolder is a path inside the repo, without '.', '..' or empty parts"
        )
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def looks_like_path(reference: str) -> bool:
    """An absolute or explicitly relative path ("/...", "./...", "~/...") is never a repo id."""
    return reference.startswith(("/", "./", "../", "~")) or os.path.isabs(reference) or "\\" in reference


def local_or_resolved(
    reference: str | None,
    what: str,
    patterns: tuple[str, ...] | None = None,
    progress: bool = False,
    cache_dir: str | None = None,
) -> str | None:
    """What every model option does with its value: a path (one that exists, or one written as a path) is
    returned as it is, for the loader to open or to name as missing; anything else is a repo id, resolved."""
    if not reference or os.path.exists(reference) or looks_like_path(reference):
        return reference
    return resolve(reference, what, patterns, progress=progress, cache_dir=cache_dir)


def resolve(
    reference: str,
    what: str,
    patterns: tuple[str, ...] | None = None,
    progress: bool = False,
    cache_dir: str | None = None,
) -> str:
    """A local folder for `reference`: the folder itself, or the repo's snapshot in the Hugging Face cache
    (downloaded when not cached and the network is allowed), with the subfolder appended."""
    if os.path.isdir(reference):
        return reference
    if os.path.exists(reference):
        raise HubError(f"{what}: {reference} is a file; give the model's folder or a Hugging Face repo id")
    if looks_like_path(reference):
        raise HubError(f"{what}: folder not found: {reference}")
    repo, subfolder = split_reference(reference)
    known = {source.reference: source.patterns for source in DEFAULTS.values()}
    patterns = patterns if patterns is not None else known.get(reference)
    if patterns is None and subfolder:
        patterns = (f"{subfolder}/*",)
    snapshot = _snapshot(repo, patterns, what, reference, progress, cache_dir)
    folder = os.path.join(snapshot, subfolder) if subfolder else snapshot
    if subfolder and not os.path.isdir(folder):
        raise HubError(f"{what}: the repo {repo} has no folder {subfolder!r}")
    missing = missing_files(snapshot, patterns or ())
    if (patterns and len(missing) == len(patterns)) or not os.path.isdir(folder):
        raise MissingFiles(
            f"{what}: the repo {repo} has none of the files {what} needs ({', '.join(missing) or 'any file'}); "
            "check the repo id, or give a local folder",
            missing,
        )
    return folder


def missing_files(folder: str, patterns: tuple[str, ...]) -> list[str]:
    """The patterns (paths in the repo, with * wildcards) that match no file under `folder`."""
    import fnmatch

    found = []
    for here, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(here, n), folder).replace(os.sep, "/") for n in names]
    return [p for p in patterns if not any(fnmatch.fnmatch(f, p) for f in found)]


def base_model_folder(
    reference: str, variant: str | None, progress: bool = False, cache_dir: str | None = None
) -> tuple[str, str | None]:
    """(folder, variant) of a base model: with `variant` ("fp16"), its half-size files when the folder or
    repo has them, else the full-size ones with a note (they are cast on load)."""
    if variant:
        try:
            folder = local_or_resolved(reference, "base model", base_model_patterns(variant), progress, cache_dir)
            if folder and not missing_files(folder, base_model_patterns(variant)):
                return folder, variant
        except MissingFiles:
            pass
        logger.warning("%s has no %s files; using its full-precision files (cast on load)", reference, variant)
    full = local_or_resolved(reference, "base model", base_model_patterns(None), progress, cache_dir)
    return full or reference, None


def _snapshot(repo: str, patterns, what: str, reference: str, progress: bool, cache_dir: str | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its "No files matched" warning: `resolve` names what is missing
    try:
        return snapshot_download(repo, allow_patterns=list(patterns) if patterns else None, cache_dir=cache_dir)
    except GatedRepoError:
        raise HubError(
            f"{what}: {repo} is gated on the Hub; accept its licence on its page, then log in with "
            "`hf auth login` (or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{what}: {reference!r} is not a folder here, and the Hub has no repo {repo} "
            "(or it is private: log in with `hf auth login`)"
        ) from None
    except RevisionNotFoundError as err:
        raise HubError(f"{what}: {repo}: {err}") from None
    except LocalEntryNotFoundError:
        raise HubError(
            f"{what}: {repo} is not in the Hugging Face cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE is set, or there is no network). Run `dynamicid download` where there is "
            "a network, and copy the cache (HF_HOME) here, or give a local folder."
        ) from None
    except (HfHubHTTPError, OSError) as err:
        raise HubError(f"{what}: downloading {repo} failed: {first_line(err)}") from None
    finally:
        enable_progress_bars()
        hub_logger.setLevel(level)


def default_cache() -> str:
    from huggingface_hub import constants

    return os.path.join(constants.HF_HOME, "dynamicid")


PACK_RECORD = "pack.json"  # written last: the files and sizes of a completely unpacked pack


def _complete_pack(folder: str) -> bool:
    """Whether `folder` holds a pack this code unpacked whole: its record lists every file at its size."""
    try:
        with open(os.path.join(folder, PACK_RECORD)) as handle:
            sizes = json.load(handle)["sizes"]
        return set(BUFFALO_L_FILES) <= set(sizes) and all(
            os.path.getsize(os.path.join(folder, name)) == size for name, size in sizes.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def fetch_buffalo_l(url: str = BUFFALO_L_URL, target: str | None = None, progress: bool = True) -> str:
    """InsightFace's buffalo_l pack, unpacked into `target` (default: HF_HOME/dynamicid/buffalo_l); a complete
    pack already there is reused. The archive is unpacked into a temporary folder beside `target`, each
    file's size checked against the archive's record (zipfile checks each CRC as it reads), and renamed into
    place, so an interrupted or failed fetch never leaves a pack that looks complete. Returns the folder."""
    target = target or os.path.join(default_cache(), "buffalo_l")
    if _complete_pack(target):
        return target
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"face pack: {target} holds no complete buffalo_l and HF_HUB_OFFLINE is set; run "
            f"`dynamicid download` with a network, or unpack {url} there"
        )
    _check_pack_url(url)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    archive, unpacking = f"{target}.zip.part", f"{target}.part-{os.getpid()}"
    try:
        _download(url, archive, progress)
        _unpack_onnx(archive, unpacking, url)
        if os.path.isdir(target):
            shutil.rmtree(target)  # an incomplete pack from an earlier, interrupted fetch
        os.replace(unpacking, target)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise HubError(f"face pack: fetching {url} failed: {first_line(err)}; run `dynamicid download` again") from None
    finally:
        for leftover in (archive, unpacking):
            if os.path.isfile(leftover):
                os.remove(leftover)
            elif os.path.isdir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    return target


def _check_pack_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise HubError(f"face pack: {url!r} is not an http(s) URL; give --face-pack-url the URL of a buffalo_l.zip")


def _unpack_onnx(archive: str, folder: str, url: str) -> None:
    """The archive's .onnx files into `folder` (the zip may or may not hold a top folder), each checked
    against the archive's size, then the record."""
    os.makedirs(folder, exist_ok=True)
    sizes = {}
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.infolist():
            name = os.path.basename(member.filename)
            if not name.endswith(".onnx"):
                continue
            path = os.path.join(folder, name)
            with bundle.open(member) as source, open(path, "wb") as sink:
                shutil.copyfileobj(source, sink)
                sink.flush()
                os.fsync(sink.fileno())
            if os.path.getsize(path) != member.file_size:
                raise HubError(
                    f"face pack: {name} in {url} unpacked to {os.path.getsize(path)} bytes, not {member.file_size}"
                )
            sizes[name] = member.file_size
    missing = [name for name in BUFFALO_L_FILES if name not in sizes]
    if missing:
        raise HubError(
            f"face pack: {url} lacks {', '.join(missing)} (a buffalo_l.zip holds {', '.join(BUFFALO_L_FILES)})"
        )
    with open(os.path.join(folder, PACK_RECORD), "w") as handle:
        json.dump({"url": url, "sizes": sizes}, handle)


def _download(url: str, path: str, progress: bool) -> None:
    import urllib.request

    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as sink:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(url), disable=not progress) as bar:
            while block := response.read(1 << 20):
                sink.write(block)
                bar.update(len(block))


@dataclass
class Downloaded:
    parts: dict[str, str] = field(default_factory=dict)  # part -> local folder


def download_defaults(
    to: str | None = None, variant: str | None = None, progress: bool = True, buffalo_url: str = BUFFALO_L_URL
) -> Downloaded:
    """Every default model: the base, the CLIP image encoder, the authors' weights and buffalo_l. With `to`,
    the files go to `to/hub` (a Hugging Face cache: use it with HF_HOME=`to`) and `to/dynamicid`."""
    _check_pack_url(buffalo_url)  # before any download
    cache = os.path.join(os.path.abspath(to), "hub") if to else None
    done = Downloaded()
    for part, source in DEFAULTS.items():
        logger.info("fetching %s (%s)", part, source.reference)
        if part == "base_model":
            done.parts[part] = base_model_folder(source.reference, variant, progress, cache)[0]
        else:
            done.parts[part] = resolve(source.reference, part, source.patterns, progress=progress, cache_dir=cache)
    pack = os.path.join(os.path.abspath(to), "dynamicid", "buffalo_l") if to else None
    done.parts["face_pack"] = fetch_buffalo_l(buffalo_url, pack, progress=progress)
    return done
