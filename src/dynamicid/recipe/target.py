"""The publish target: what is published there now, whether the run may write there, the lock, and the swap.

Publish replaces only what an earlier publish made. A folder target must be absent, empty, or hold a
dynamicid_run.json; it may not contain or lie inside the run's output or any stage's input. A symbolic link
target (`current -> v1`) is published as a new sibling folder (`current.v2`) and the link is replaced
atomically, leaving the old version where it was. The version number is taken and the swap done under a
lock beside the target, so two runs publishing to one place take turns. A Hub target (hf://owner/name) is
read fresh (no cached copy) and an unreadable record stops the gate and the publish."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass

from dynamicid.errors import ConfigError, DynamicIDError, first_line
from dynamicid.filestamps import file_sha256
from dynamicid.generation.published import RUN_RECORD, RecordProblem, published_record, read_record
from dynamicid.recipe.recipe import HUB_PREFIX, Recipe

logger = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 600.0


class TargetError(DynamicIDError):
    """The publish target cannot be read or may not be written."""


@dataclass
class Published:
    """What is published at the target now: its record, and the local folder holding it (None for a Hub repo
    until it is fetched)."""

    record: dict
    folder: str | None
    digest: str  # of the record's bytes: tells one publish from another

    @property
    def version(self) -> int:
        return int(self.record.get("version", 0))


def is_hub(to: str) -> bool:
    return to.startswith(HUB_PREFIX)


def previous_of(to: str) -> str:
    return to.rstrip("/") + ".previous"


def check_target(recipe: Recipe) -> None:
    """Refuses, before any stage runs, a target the run may not write: empty, the run's output or an input (or
    a folder holding one), or an existing folder that no publish made."""
    to = recipe.tables["publish"].get("to", "")
    where = f"recipe {recipe.path}: [publish] to = {to!r}"
    if not to.strip() or to.rstrip("/") == HUB_PREFIX.rstrip("/"):
        raise ConfigError(f'{where}: give a folder (to = "models/faces") or a Hub repo (to = "hf://owner/name")')
    if is_hub(to):
        _check_repo_id(to[len(HUB_PREFIX) :], where)
        return
    real = os.path.realpath(to)
    for name, path in _guarded(recipe).items():
        other = os.path.realpath(path)
        if real == other or other.startswith(real + os.sep) or real.startswith(other + os.sep):
            raise ConfigError(
                f"{where}: it {'is' if real == other else 'overlaps'} {name} ({path}); publishing there would move "
                "it aside and delete it. Publish to a folder of its own, outside the run's output and inputs"
            )
    for folder in (to, previous_of(to)):
        _check_ours(folder, where)


def _check_repo_id(repo: str, where: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ConfigError(f"{where}: {repo!r} is not a Hub repo id ({err}); use hf://owner/name") from None
    if "/" not in repo:
        raise ConfigError(f"{where}: name the repo's owner too: hf://owner/{repo}")


def _guarded(recipe: Recipe) -> dict[str, str]:
    """Every path the run reads or writes that publish must never replace."""
    found = {"the run's output ([run] output)": recipe.output, "the recipe itself": recipe.path}
    for stage, key in (("prep", "input"), ("collect", "urls"), ("eval", "prompts")):
        value = recipe.tables.get(stage, {}).get(key)
        if value:
            found[f"[{stage}] {key}"] = value
    for key in ("base_model", "clip_image_encoder"):
        value = getattr(recipe.run, key)
        if value and os.path.exists(value):
            found[f"[run] {key}"] = value
    return found


def _check_ours(folder: str, where: str) -> None:
    if not os.path.lexists(folder) or (os.path.islink(folder) and not os.path.exists(folder)):
        return
    if not os.path.isdir(folder):
        raise ConfigError(f"{where}: {folder} is a file, not a published model; choose another target")
    if os.path.isfile(os.path.join(folder, RUN_RECORD)) and published_record(folder) is None:
        raise ConfigError(
            f"{where}: {os.path.join(folder, RUN_RECORD)} cannot be read (damaged?), so what is published there is "
            "unknown; restore it, or publish to another folder"
        )
    if published_record(folder) is None and os.listdir(folder):
        raise ConfigError(
            f"{where}: {folder} holds files that no publish made (it has no {RUN_RECORD}); publish replaces only "
            "its own models. Choose an empty or new folder"
        )


def current(recipe: Recipe) -> Published | None:
    """What is published at the recipe's target now, or None when nothing is. A record that exists but cannot
    be read (a damaged file, a Hub that answers with an error) raises TargetError: the gate and the publish
    must not guess."""
    to = recipe.tables["publish"]["to"]
    if is_hub(to):
        return _hub_current(to[len(HUB_PREFIX) :])
    for folder in (to, previous_of(to)):  # .previous: a swap cut short
        path = os.path.join(folder, RUN_RECORD)
        record = _read(path, "restore it, or publish elsewhere")
        if record is not None:
            return Published(record, folder, file_sha256(path))
    return None


def _read(path: str, fix: str) -> dict | None:
    try:
        return read_record(path)
    except RecordProblem as err:
        raise TargetError(f"the published record cannot be used ({err}); {fix}") from None


def _hub_current(repo: str) -> Published | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    try:  # force_download: never a cached copy, which could be an older version
        path = hf_hub_download(repo, RUN_RECORD, force_download=True)
    except Exception as err:  # HTTP errors, the network: the record is unknown, so nothing may be decided
        cause = err if isinstance(err, HfHubHTTPError) else err.__cause__ or err.__context__ or err
        if isinstance(cause, RepositoryNotFoundError):
            return None
        if isinstance(cause, EntryNotFoundError):
            raise TargetError(
                f"the Hub repo {repo} exists but holds no {RUN_RECORD}: no publish made it; publish to another repo"
            ) from None
        raise TargetError(
            f"the published record of the Hub repo {repo} cannot be read ({type(cause).__name__}: "
            f"{first_line(cause)[:200]}); the gate and the publish need it. Run again when the Hub answers"
        ) from None
    record = _read(path, f"fix the Hub repo {repo}'s {RUN_RECORD}, or publish elsewhere")
    if record is None:
        raise TargetError(f"the Hub repo {repo}'s {RUN_RECORD} vanished while it was read; run again")
    return Published(record, None, file_sha256(path))


def champion_token(recipe: Recipe, state) -> str:
    """What the gate compares with, for its fingerprint: the target and the digest of what is published there.
    The record this run published itself stands for what the gate saw before it, so publishing does not make
    the gate out of date; another model published there (or another target) does."""
    if not recipe.has("publish"):
        return "nothing published"
    to = recipe.tables["publish"]["to"]
    shown = to if is_hub(to) else os.path.relpath(os.path.abspath(to), os.path.dirname(os.path.abspath(recipe.path)))
    try:
        published = current(recipe)
    except TargetError:
        return f"{shown}: unreadable"
    if published and state.get("publish").get("record_digest") == published.digest:
        return state.get("gate").get("champion_seen") or f"{shown}: {published.digest}"
    return f"{shown}: {published.digest if published else 'nothing published'}"


def champion_folder(published: Published, to: str) -> str:
    """A local folder of the published model (a Hub repo is fetched)."""
    if published.folder:
        return published.folder
    from dynamicid.hub import resolve

    return resolve(to[len(HUB_PREFIX) :], "published DynamicID model")


def weights_digest(folder: str | None) -> str | None:
    """One digest of every file's bytes under a weights folder: the same weights give the same digest."""
    if not folder or not os.path.isdir(folder):
        return None
    digest = hashlib.sha256()
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def target_lock(to: str, wait: float = LOCK_WAIT_SECONDS):
    """Held while the version is taken and the swap made: a second run publishing to the same folder waits."""
    from dynamicid.prep.guard import OutputLock, PrepError

    parent, name = os.path.split(os.path.abspath(to).rstrip(os.sep))
    lock = OutputLock(parent, state=f".{name}.dynamicid-publish", command="publish")
    deadline = time.monotonic() + wait
    while True:
        try:
            lock.__enter__()
            break
        except PrepError as err:
            if time.monotonic() > deadline:
                raise TargetError(f"{to}: {err}") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def install(staging: str, to: str, version: int) -> str:
    """Puts the staged model in place; returns the folder that now holds it. A link target gets a new sibling
    folder and the link is swapped; a folder target is swapped by renames (a kill leaves the old model or
    the new one: between the two renames, at TO.previous, which readers also look at)."""
    if os.path.islink(to.rstrip("/")):
        return _install_behind_link(staging, to.rstrip("/"), version)
    os.makedirs(os.path.dirname(os.path.abspath(to)) or ".", exist_ok=True)
    previous = previous_of(to)
    _remove_ours(previous)
    if os.path.exists(to):
        os.replace(to, previous)
    shutil.move(staging, to)
    _remove_ours(previous)
    return to


def _install_behind_link(staging: str, link: str, version: int) -> str:
    parent, name = os.path.split(os.path.abspath(link))
    folder = os.path.join(parent, f"{name}.v{version}")
    _remove_ours(folder)  # a crash after the move, before the link: ours, made by the last try
    if os.path.lexists(folder):
        raise TargetError(f"{folder} exists and no publish made it; move it, then publish again")
    shutil.move(staging, folder)
    temporary = os.path.join(parent, f".{name}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)
    os.symlink(os.path.basename(folder) if not os.path.isabs(os.readlink(link)) else folder, temporary)
    os.replace(temporary, link)  # atomic: readers see the old version or the new one
    return folder


def _remove_ours(folder: str) -> None:
    """Removes `folder` only when a publish made it (it holds a record); anything else stays and is named."""
    if not os.path.lexists(folder):
        return
    if os.path.isdir(folder) and not os.path.islink(folder) and not os.listdir(folder):
        os.rmdir(folder)  # an empty folder: nothing to lose
        return
    if os.path.islink(folder) or published_record(folder) is None:
        raise TargetError(f"{folder} exists and no publish made it; move it away, then publish again")
    shutil.rmtree(folder)
