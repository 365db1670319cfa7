"""The manifest's columns, defined once and turned into Spark and Arrow schemas."""

from __future__ import annotations

import pyarrow as pa

from dynamicid.faces.face_prompt import CLASSIFIER_EMOTIONS

STAGE_TIMINGS = ("read", "decode", "detect", "landmarks", "align", "prompt", "embed", "caption", "write", "total")

# (column, Spark DDL type); one row per input file, or per kept face under --multi-face all.
COLUMNS: list[tuple[str, str]] = (
    [
        ("source_path", "string"),
        ("relative_path", "string"),
        ("source_bytes", "bigint"),
        ("sha256", "string"),
        ("identity", "string"),
        ("name", "string"),  # output name, set for kept faces
        ("face_index", "int"),  # 0 = largest face
        ("faces_detected", "int"),
        ("status", "string"),  # ok | rejected | error
        ("reason", "string"),  # a code, see README
        ("message", "string"),
        ("format", "string"),
        ("width", "int"),  # upright, full resolution
        ("height", "int"),
        ("exif_rotated", "boolean"),
        ("bbox", "array<double>"),  # x0, y0, x1, y1 in source pixels
        ("landmarks", "array<array<double>>"),  # (K, 2) in source pixels
        ("aligned_landmarks", "array<array<double>>"),  # (K, 2) in NAME.jpg pixels
        ("landmark_convention", "string"),
        ("affine", "array<array<double>>"),  # 2x3: source pixels -> NAME.jpg pixels
        ("detector_model", "string"),
        ("landmarks_model", "string"),
        ("embedding_model", "string"),
        ("embedding_dim", "int"),
        ("embedding", "array<float>"),  # the identity embedding, L2-normalised (also in NAME.pt)
        ("face_hash", "string"),  # 64-bit perceptual hash of the aligned face, 16 hex digits
        ("captioner_model", "string"),
        ("caption", "string"),
        ("face_prompt", "string"),
        ("emotion", "string"),
    ]
    + [(f"emotion_{word}", "double") for word in CLASSIFIER_EMOTIONS]
    + [  # the classifier's probabilities
        ("expression_model", "string"),
        ("pitch", "double"),
        ("yaw", "double"),
        ("roll", "double"),
        ("smile", "double"),
        ("mouth_open", "double"),
        ("eyes_closed", "double"),
        ("brows_raised", "double"),
        ("sharpness", "double"),
        ("config_hash", "string"),
        ("resumed", "boolean"),
    ]
    + [(f"ms_{stage}", "double") for stage in STAGE_TIMINGS]
)

COLUMN_NAMES = [name for name, _ in COLUMNS]
# Added by curation after the job (`curate`), on the whole manifest: the kept file a duplicate copies, the
# split, where the identity came from (folder, cluster or none), and how far a face is from the rest of
# its identity (1 - cosine to the mean of the others) with the verdict.
CURATED_COLUMNS = ["duplicate_of", "split", "identity_source", "identity_distance", "identity_outlier"]
MANIFEST_COLUMNS = COLUMN_NAMES + CURATED_COLUMNS

_ARROW = {
    "string": pa.string(),
    "bigint": pa.int64(),
    "int": pa.int32(),
    "boolean": pa.bool_(),
    "double": pa.float64(),
    "array<double>": pa.list_(pa.float64()),
    "array<float>": pa.list_(pa.float32()),
    "array<array<double>>": pa.list_(pa.list_(pa.float64())),
}


def arrow_schema(columns: list[tuple[str, str]]) -> pa.Schema:
    """(column, Spark DDL type) pairs as an Arrow schema."""
    return pa.schema([(name, _ARROW[kind]) for name, kind in columns])


def spark_ddl(columns: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in columns)


ARROW_SCHEMA = arrow_schema(COLUMNS)
SPARK_DDL = spark_ddl(COLUMNS)


def empty_row() -> dict:
    return {name: None for name in COLUMN_NAMES}


def points_array(value):
    """A manifest point list (nested lists, or the array of arrays pandas gives) as a float (K, 2) array."""
    import numpy as np

    if value is None:
        return np.zeros((0, 2))
    return np.array([np.asarray(p, dtype=float) for p in value], dtype=float).reshape(-1, 2)
