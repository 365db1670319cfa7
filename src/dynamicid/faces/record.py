"""The face analysis that made a dataset's embeddings, recorded beside the data (prep writes
OUTPUT/face_analysis.json) and in trained weights (dynamicid.json's `face_analysis`), so that training's
samples, generation and serving analyse reference photos the way the training data was analysed."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from typing import Any

from dynamicid.atomic import write_atomic
from dynamicid.errors import ConfigError, InputError
from dynamicid.faces.analyzer import FaceAnalysisConfig

RECORD_FILE = "face_analysis.json"


def write_dataset_record(folder: str, config: FaceAnalysisConfig) -> None:
    write_atomic(os.path.join(folder, RECORD_FILE), json.dumps({"face_analysis": asdict(config)}, indent=2).encode())


def read_dataset_record(folder: str) -> dict[str, Any] | None:
    """The `FaceAnalysisConfig` fields prep recorded in `folder`, or None where it recorded none (older outputs)."""
    path = os.path.join(folder, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)["face_analysis"]
        config_of(record, path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is damaged ({err}); rerun prep on the same output to rewrite it") from None
    return dict(record)


def config_of(record: dict[str, Any], where: str) -> FaceAnalysisConfig:
    """A recorded analysis as a `FaceAnalysisConfig`; unknown fields are named."""
    known = {f.name for f in fields(FaceAnalysisConfig)}
    unknown = sorted(set(record) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown face analysis field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return FaceAnalysisConfig(**record)


def check_same_embedder(requested: FaceAnalysisConfig, recorded: FaceAnalysisConfig, weights: str) -> None:
    """Embeddings of two embedders are not interchangeable, even at the same width: refuse a mix by name."""
    if requested.embedder != recorded.embedder:
        raise ConfigError(
            f"the weights {weights} were trained on {recorded.embedder} embeddings, but the {requested.embedder} "
            f"embedder was asked for; leave the embedder option out (the weights' own analysis is used) or use "
            f"weights trained on {requested.embedder} embeddings"
        )
