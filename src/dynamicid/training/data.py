"""prep's output as training data, and stateless sampling: batch k depends only on (seed, k), so a
resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dynamicid.errors import InputError
from dynamicid.faces import landmark_image
from dynamicid.imagefile import open_image
from dynamicid.prep import outputs

logger = logging.getLogger(__name__)


class TrainingDataError(InputError):
    pass


@dataclass(frozen=True)
class Face:
    identity: str
    name: str
    jpg: str
    png: str
    txt: str
    pt: str
    face_prompt: str


def _file_problem(face: Face, dim: int) -> str | None:
    return outputs.face_files_problem({"jpg": face.jpg, "png": face.png, "txt": face.txt, "pt": face.pt}, dim)


def load_faces(folder: str, check_files: bool = True, keep_outliers: bool = False) -> list[Face]:
    """The kept faces of prep's output. Before any training step, every face's files are checked
    (`_file_problem`); bad ones are left out, counted and listed in a warning, so a run never dies at
    step N on a file that could have been checked at step 0."""
    manifest_path = os.path.join(folder, "manifest.parquet")
    if not os.path.isfile(manifest_path):
        raise TrainingDataError(f"{folder} has no manifest.parquet: run `dynamicid prep INPUT {folder}` first")
    manifest = pd.read_parquet(manifest_path)
    kept = manifest[manifest.status == "ok"] if "status" in manifest else manifest.iloc[0:0]
    if "split" in kept:  # prep's identity-disjoint split: training reads its own identities only
        held_out = kept.split.notna() & (kept.split != "train")
        if held_out.any():
            logger.info("%d faces of val/test identities are held out of training (prep --split)", int(held_out.sum()))
        kept = kept[~held_out]
    if "identity_outlier" in kept and not keep_outliers:  # likely strangers in a person's folder
        strangers = kept.identity_outlier.fillna(False).astype(bool)
        if strangers.any():
            logger.warning(
                "%d faces flagged by prep as unlike the rest of their identity are left out (identity_outlier; "
                "--keep-outliers trains on them): %s",
                int(strangers.sum()),
                ", ".join(kept.relative_path[strangers].head(5)),
            )
        kept = kept[~strangers]
    if kept.empty:
        held = int((manifest.status == "ok").sum()) if "status" in manifest else 0
        raise TrainingDataError(
            f"{manifest_path} lists no kept faces to train on ({len(manifest)} rows, {held} kept, "
            + (
                "all of them in the val/test split: give train a larger share with prep --split, or another "
                "--split-seed)"
                if held
                else "none with status ok)"
            )
        )
    dims = sorted(kept.embedding_dim.dropna().astype(int).unique().tolist())
    if len(dims) > 1:
        models = sorted(kept.embedding_model.dropna().unique().tolist())
        raise TrainingDataError(
            f"the manifest mixes embeddings of dimensions {dims} (models {models}); prepare the data with one embedder"
        )
    faces = []
    for row in kept.itertuples():
        paths = outputs.face_paths(folder, row.identity, row.name)
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            raise TrainingDataError(f"{missing[0]} is listed as kept but missing; rerun prep to complete the output")
        faces.append(
            Face(
                row.identity or row.name,
                row.name,
                paths["jpg"],
                paths["png"],
                paths["txt"],
                paths["pt"],
                row.face_prompt or "",
            )
        )
    return _without_bad_files(faces, dims[0], manifest_path) if check_files and dims else faces


def _without_bad_files(faces: list[Face], dim: int, manifest_path: str) -> list[Face]:
    problems = [(face, problem) for face in faces if (problem := _file_problem(face, dim))]
    if not problems:
        return faces
    bad = {face for face, _ in problems}
    good = [face for face in faces if face not in bad]
    shown = "; ".join(problem for _, problem in problems[:5]) + (
        f"; ... ({len(problems)} in all)" if len(problems) > 5 else ""
    )
    if not good:
        raise TrainingDataError(
            f"none of the {len(faces)} kept faces of {manifest_path} can be read: {shown}. "
            "Rerun prep on the same output to rewrite them."
        )
    logger.warning(
        "leaving out %d of %d faces whose files are damaged (rerun prep on the same output to repair them):\n  %s",
        len(problems),
        len(faces),
        "\n  ".join(problem for _, problem in problems),
    )
    return good


def data_identity(folder: str) -> dict:
    """What a resumed run compares to know the data is the same: a digest of the kept faces (names, source
    photos' sha256, face prompts, embedding model) and their count. A moved folder matches; a re-prepared
    one with other photos or another embedder does not."""
    import hashlib

    columns = ["status", "identity", "name", "sha256", "face_prompt", "embedding_model"]
    manifest = pd.read_parquet(os.path.join(folder, "manifest.parquet"), columns=columns)
    kept = manifest[manifest.status == "ok"].drop(columns="status").astype(str).sort_values(["identity", "name"])
    digest = hashlib.sha256(kept.to_csv(index=False).encode()).hexdigest()[:16]
    return {"data_digest": digest, "data_faces": len(kept)}


def face_analysis_of(folder: str) -> dict | None:
    """The face analysis that made the data's embeddings: prep's record, or for outputs older than the record,
    the default analysis when the manifest says dlib's ResNet made the embeddings; else None (unknown)."""
    from dataclasses import asdict

    from dynamicid.faces import FaceAnalysisConfig
    from dynamicid.faces.record import read_dataset_record

    record = read_dataset_record(folder)
    if record is not None:
        return record
    manifest = pd.read_parquet(os.path.join(folder, "manifest.parquet"), columns=["embedding_model"])
    models = set(manifest.embedding_model.dropna())
    if models and all(str(m).startswith("dlib-resnet") for m in models):
        return asdict(FaceAnalysisConfig())
    logger.warning("%s records no face analysis; the trained weights will not say which embedder they need", folder)
    return None


def embedding_dim(faces: list[Face]) -> int:
    return int(torch.load(faces[0].pt, weights_only=True)["dim"])


def by_identity(faces: list[Face]) -> dict[str, list[Face]]:
    groups: dict[str, list[Face]] = {}
    for face in faces:
        groups.setdefault(face.identity, []).append(face)
    return groups


def step_rng(seed: int, step: int, place: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, step, place])


def step_generator(seed: int, step: int, place: int = 0, device="cpu") -> torch.Generator:
    """The random stream of one place in step `step`'s global batch. It depends on the place, not on the
    process that draws it, so N processes draw what one process would."""
    return torch.Generator(device=device).manual_seed(int(step_rng(seed, step, place).integers(2**62)))


def local_places(global_size: int, processes: int, process: int) -> range:
    """This process's places in a global batch: equal, contiguous shares (the trainer checks that
    `global_size` divides evenly), so the averaged gradients of N processes equal one process's."""
    share = global_size // processes
    return range(process * share, (process + 1) * share)


def read_image(path: str, size: int) -> torch.Tensor:
    """An RGB image as (3, size, size) in [-1, 1]."""
    image = open_image(path)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def read_rgb(path: str) -> np.ndarray:
    return np.asarray(open_image(path))


def read_embedding(path: str) -> torch.Tensor:
    return torch.load(path, weights_only=True)["embedding"].float()


def read_caption(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def read_map96(path: str) -> np.ndarray:
    return landmark_image.split_landmark_png(np.asarray(open_image(path, "L")))[1]


@dataclass
class AnchorPair:
    reference: Face
    target: Face  # the reference itself when the person has one photo


class AnchorSampler:
    """Reference and target: two different photos of one person; a person with one photo uses it for both."""

    def __init__(self, faces: list[Face]):
        self.faces = faces
        self.groups = by_identity(faces)
        self.single_photo = sorted(i for i, g in self.groups.items() if len(g) < 2)

    def batch(self, seed: int, step: int, size: int) -> list[AnchorPair]:
        """The global batch of step `step`: every process draws the same one and takes its share."""
        rng = step_rng(seed, step)
        pairs = []
        for index in rng.integers(len(self.faces), size=size):
            target = self.faces[index]
            group = self.groups[target.identity]
            others = [f for f in group if f.name != target.name]
            reference = others[rng.integers(len(others))] if others else target
            pairs.append(AnchorPair(reference, target))
        return pairs


class ReconfigSampler:
    """One identity per step: one source photo and up to `max_targets` other photos of the same person."""

    def __init__(self, faces: list[Face], max_targets: int):
        groups = by_identity(faces)
        self.skipped = sorted(i for i, g in groups.items() if len(g) < 2)
        self.groups = {i: g for i, g in groups.items() if len(g) >= 2}
        if not self.groups:
            raise TrainingDataError(
                f"reconfig needs identities with at least two photos; all {len(groups)} identities have one "
                f"({', '.join(self.skipped[:5])}{', ...' if len(self.skipped) > 5 else ''})"
            )
        self.identities = sorted(self.groups)
        self.max_targets = max_targets

    def pick(self, seed: int, step: int, place: int = 0) -> tuple[Face, list[Face]]:
        """The identity at `place` of step `step`'s global batch."""
        rng = step_rng(seed, step, place)
        group = self.groups[self.identities[rng.integers(len(self.identities))]]
        order = rng.permutation(len(group))
        source = group[order[0]]
        targets = [group[i] for i in order[1 : 1 + self.max_targets]]
        return source, targets


# -- the anchoring data path: a Dataset of micro-batches, read ahead by DataLoader workers -------------


class AnchorBatches(torch.utils.data.Dataset):
    """This process's share of anchoring micro-batch k, read and decoded: everything the step needs from
    disk. The global batch depends only on (seed, k), as the samplers do, so workers can read ahead, a
    resumed run reads the same, and N processes together read what one process would.

    With `clip_cache` (face name -> features file), the CLIP features of each reference are read from
    the cache instead of running the image encoder in the step."""

    def __init__(
        self,
        sampler: AnchorSampler,
        seed: int,
        batch_size: int,
        resolution: int,
        id_dim: int,
        drops: tuple[float, float, float],
        places: range | None = None,
        clip_cache: dict[str, str] | None = None,
    ):
        self.sampler, self.seed, self.batch_size, self.resolution = sampler, seed, batch_size, resolution
        self.id_dim, self.drops, self.clip_cache = id_dim, drops, clip_cache
        self.places = places if places is not None else range(batch_size)

    def __len__(self) -> int:  # micro-batches are drawn by index from an unbounded stream
        return 2**62

    def __getitem__(self, micro: int) -> dict:
        everyone = self.sampler.batch(self.seed, micro, self.batch_size)
        draws = step_rng(self.seed + 1, micro).random(self.batch_size)
        p_text, p_image, p_both = self.drops
        drop_text = (draws < p_text) | (draws >= p_text + p_image) & (draws < p_text + p_image + p_both)
        drop_image = (draws >= p_text) & (draws < p_text + p_image + p_both)
        mine = list(self.places)
        pairs, drop_text, drop_image = [everyone[i] for i in mine], drop_text[mine], drop_image[mine]
        batch = {
            "places": mine,
            "captions": ["" if drop else read_caption(p.target.txt) for p, drop in zip(pairs, drop_text)],
            "pixels": torch.stack([read_image(p.target.jpg, self.resolution) for p in pairs]),
            "embeddings": torch.stack(
                [
                    torch.zeros(self.id_dim) if drop else read_embedding(p.reference.pt)
                    for p, drop in zip(pairs, drop_image)
                ]
            ),
            "drop_image": torch.from_numpy(drop_image),
        }
        if self.clip_cache is None:
            batch["references"] = [None if drop else read_rgb(p.reference.jpg) for p, drop in zip(pairs, drop_image)]
        else:
            from safetensors.torch import load_file

            batch["clip"] = [
                None if drop else load_file(self.clip_cache[p.reference.name])["clip"]
                for p, drop in zip(pairs, drop_image)
            ]
        return batch


def _as_is(item):
    return item


class ReadAhead:
    """Micro-batches by index, read ahead by `workers` DataLoader processes. Indices are asked in order;
    any other index (a resumed run) starts a fresh reader there."""

    def __init__(self, dataset: torch.utils.data.Dataset, workers: int, prefetch: int = 2):
        self.dataset, self.workers, self.prefetch = dataset, workers, prefetch
        self._reader, self._next = None, None

    def __getitem__(self, index: int):
        if self.workers == 0:
            return self.dataset[index]
        if self._reader is None or index != self._next:
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_size=None,
                sampler=range(index, len(self.dataset)),
                num_workers=self.workers,
                prefetch_factor=self.prefetch,
                collate_fn=_as_is,
            )
            self._reader = iter(loader)
        self._next = index + 1
        return next(self._reader)

    def close(self) -> None:
        self._reader = None  # the DataLoader's workers stop with their iterator
