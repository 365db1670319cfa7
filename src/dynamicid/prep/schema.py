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
CURATED_COLUMNS = [
    "duplicate_of",
    "split",
    "identity_source",  # folder | cluster | review
    "identity_distance",
    "identity_outlier",
    "input_identity",  # the identity the input's folder gives (none for flat and clustered inputs)
]
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


def read_checked_parquet(spark, path: str, columns: list[tuple[str, str]], work_dir: str, start_over: str):
    """A Parquet file the toolkit wrote (a manifest), its `columns` checked first: one of the wrong shape (edited
    by hand) is refused with what to do (`start_over`), never a Spark stack; one whose types a pandas round trip
    changed (an all-null column, other integer widths) is read through a copy in `work_dir` with the types
    it should have."""
    import os

    import pyarrow.parquet as pq

    from dynamicid.errors import InputError
    from dynamicid.prep.sparkenv import spark_uri

    accepted = {  # what a pandas round trip may turn a column into; an all-null column is null
        "bigint": pa.types.is_integer,
        "int": pa.types.is_integer,
        "double": pa.types.is_floating,
        "string": lambda kind: pa.types.is_string(kind) or pa.types.is_large_string(kind),
    }
    try:
        found = pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"{path} cannot be read ({err}); {start_over}") from None
    for name, kind in columns:
        index = found.get_field_index(name)
        if index < 0 or not (pa.types.is_null(found.field(index).type) or accepted[kind](found.field(index).type)):
            got = "missing" if index < 0 else str(found.field(index).type)
            raise InputError(
                f"{path}: column {name} should be {kind}, not {got} (was it edited by hand?); restore it, "
                f"or {start_over}"
            )
    wanted = arrow_schema(columns)
    names = [name for name, _ in columns]
    if not pa.schema([found.field(name) for name in names]).equals(wanted):
        copy = os.path.join(work_dir, f"{os.path.basename(path)}.as-written.parquet")
        os.makedirs(work_dir, exist_ok=True)
        with pq.ParquetWriter(copy, wanted) as writer:
            for batch in pq.ParquetFile(path).iter_batches(columns=names):
                writer.write_batch(batch.cast(wanted))
        path = copy
    return spark.read.schema(spark_ddl(columns)).parquet(spark_uri(path))


def manifest_rows(path: str, columns: list[str], batch_rows: int = 65536):
    """The rows of a Parquet file as tuples of `columns`, a batch at a time (never the whole table)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        yield from zip(*(batch.column(name).to_pylist() for name in columns))
