"""prep's output as training data, and stateless sampling: batch k depends only on (seed, k), so a
resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dynamicid.faces import landmark_image
from dynamicid.prep import outputs


class TrainingDataError(ValueError):
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


def load_faces(folder: str) -> list[Face]:
    manifest_path = os.path.join(folder, "manifest.parquet")
    if not os.path.isfile(manifest_path):
        raise TrainingDataError(f"{folder} has no manifest.parquet: run `dynamicid prep INPUT {folder}` first")
    manifest = pd.read_parquet(manifest_path)
    kept = manifest[manifest.status == "ok"] if "status" in manifest else manifest.iloc[0:0]
    if kept.empty:
        raise TrainingDataError(f"{manifest_path} lists no kept faces ({len(manifest)} rows, none with status ok)")
    dims = sorted(kept.embedding_dim.dropna().astype(int).unique().tolist())
    if len(dims) > 1:
        models = sorted(kept.embedding_model.dropna().unique().tolist())
        raise TrainingDataError(f"the manifest mixes embeddings of dimensions {dims} (models {models}); "
                                "prepare the data with one embedder")
    faces = []
    for row in kept.itertuples():
        paths = outputs.face_paths(folder, row.identity, row.name)
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            raise TrainingDataError(f"{missing[0]} is listed as kept but missing; rerun prep to complete the output")
        faces.append(Face(row.identity or row.name, row.name, paths["jpg"], paths["png"], paths["txt"], paths["pt"],
                          row.face_prompt or ""))
    return faces


def embedding_dim(faces: list[Face]) -> int:
    return int(torch.load(faces[0].pt, weights_only=True)["dim"])


def by_identity(faces: list[Face]) -> dict[str, list[Face]]:
    groups: dict[str, list[Face]] = {}
    for face in faces:
        groups.setdefault(face.identity, []).append(face)
    return groups


def step_rng(seed: int, step: int, process: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, step, process])


def step_generator(seed: int, step: int, process: int = 0, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(step_rng(seed, step, process).integers(2**62)))


def read_image(path: str, size: int) -> torch.Tensor:
    """An RGB image as (3, size, size) in [-1, 1]."""
    image = Image.open(path).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def read_rgb(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def read_embedding(path: str) -> torch.Tensor:
    return torch.load(path, weights_only=True)["embedding"].float()


def read_caption(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def read_map96(path: str) -> np.ndarray:
    return landmark_image.split_landmark_png(np.asarray(Image.open(path).convert("L")))[1]


@dataclass
class AnchorPair:
    reference: Face
    target: Face
    same_photo: bool


class AnchorSampler:
    """Reference and target: two different photos of one person; a person with one photo uses it for both."""

    def __init__(self, faces: list[Face]):
        self.faces = faces
        self.groups = by_identity(faces)
        self.single_photo = sorted(i for i, g in self.groups.items() if len(g) < 2)

    def batch(self, seed: int, step: int, size: int, process: int = 0) -> list[AnchorPair]:
        rng = step_rng(seed, step, process)
        pairs = []
        for index in rng.integers(len(self.faces), size=size):
            target = self.faces[index]
            group = self.groups[target.identity]
            others = [f for f in group if f.name != target.name]
            reference = others[rng.integers(len(others))] if others else target
            pairs.append(AnchorPair(reference, target, not others))
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

    def pick(self, seed: int, step: int, process: int = 0) -> tuple[Face, list[Face]]:
        rng = step_rng(seed, step, process)
        group = self.groups[self.identities[rng.integers(len(self.identities))]]
        order = rng.permutation(len(group))
        source = group[order[0]]
        targets = [group[i] for i in order[1 : 1 + self.max_targets]]
        return source, targets
