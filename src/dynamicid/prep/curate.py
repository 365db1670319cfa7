"""Curation after the job, on the whole manifest, in Spark (the driver never holds it):

- exact duplicates: files with the same bytes (sha256). The first by path keeps its faces; the others'
  kept faces become `rejected`, reason `duplicate`, with `duplicate_of` naming the kept file, and the
  message says when the copy sits under another identity (the same photo as two people);
- what `identities.find_identities` found on the driver (near copies, clusters, distances), joined in;
- identity-disjoint splits: every face of one identity gets the same `split` (train, val or test), from a
  seeded hash of the identity, so evaluation never sees a training identity.

Curation marks rows; it deletes nothing. A duplicate keeps its four files (training reads only `ok` faces),
so a rerun finds them and resumes instead of redoing the copy.
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")
SPLIT_BUCKETS = 1_000_000


def parse_split(text: str) -> tuple[float, float, float] | None:
    """ "0.9,0.05,0.05" -> the three shares; None when it is not three shares from 0 to 1 summing to 1."""
    try:
        shares = [float(part) for part in text.split(",")]
    except ValueError:
        return None
    if len(shares) != 3 or any(not 0 <= share <= 1 for share in shares) or abs(sum(shares) - 1) > 1e-6:
        return None
    return shares[0], shares[1], shares[2]


def _under_another_identity(kept_identity):
    from pyspark.sql import functions as F

    elsewhere = ~F.col("identity").eqNullSafe(kept_identity)
    note = F.concat(
        F.lit(" under another identity ("),
        F.coalesce(kept_identity, F.lit("none")),
        F.lit("): the same photo cannot be two people; check both"),
    )
    return F.when(elsewhere, note).otherwise(F.lit(""))


def _rejected_as_duplicate(frame, copy, kept_path, message):
    """`frame` with the rows where `copy` holds rejected as duplicates of `kept_path`."""
    from pyspark.sql import functions as F

    return frame.withColumns(
        {
            "status": F.when(copy, F.lit("rejected")).otherwise(F.col("status")),
            "reason": F.when(copy, F.lit("duplicate")).otherwise(F.col("reason")),
            "message": F.when(copy, message).otherwise(F.col("message")),
            "duplicate_of": F.when(copy, kept_path).otherwise(F.col("duplicate_of")),
        }
    )


def mark_exact_duplicates(frame):
    """The job's rows with `duplicate_of` added and the later copies of one file's bytes rejected."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    files = frame.select("sha256", "relative_path", "identity").where(F.col("sha256").isNotNull()).distinct()
    first = Window.partitionBy("sha256").orderBy("relative_path")
    kept = files.withColumn("rank", F.row_number().over(first)).where(F.col("rank") == 1)
    kept = kept.select("sha256", F.col("relative_path").alias("kept_path"), F.col("identity").alias("kept_identity"))
    joined = frame.withColumn("duplicate_of", F.lit(None).cast("string")).join(kept, "sha256", "left")
    copy = (F.col("status") == "ok") & F.col("kept_path").isNotNull() & (F.col("relative_path") != F.col("kept_path"))
    message = F.concat(F.lit("the same file as "), F.col("kept_path"), _under_another_identity(F.col("kept_identity")))
    marked = _rejected_as_duplicate(joined, copy, F.col("kept_path"), message)
    return marked.select(*frame.columns, "duplicate_of")


# What the driver's `identities` pass hands back, one row per face the job kept (`identities.findings_frame`).
FINDINGS_COLUMNS = [
    ("relative_path", "string"),
    ("face_index", "int"),
    ("found_identity", "string"),
    ("identity_distance", "double"),
    ("identity_outlier", "boolean"),
    ("copy_of_path", "string"),
    ("copy_of_identity", "string"),
]


def with_findings(frame, findings, layout: str):
    """`frame` (after `mark_exact_duplicates`) with the driver's findings: near copies rejected, cluster
    identities set, distances and outlier flags. The findings cover every face the job kept, exact duplicates
    included (the driver finds them as copies too, and gives a copy its kept face's cluster)."""
    from pyspark.sql import functions as F

    joined = frame.join(findings, ["relative_path", "face_index"], "left")
    copy = (F.col("status") == "ok") & F.col("copy_of_path").isNotNull()
    message = F.concat(
        F.lit("a near copy of "),
        F.col("copy_of_path"),
        F.lit(" (the same face, re-encoded, resized or cropped)"),
        _under_another_identity(F.col("copy_of_identity")),
    )
    joined = _rejected_as_duplicate(joined, copy, F.col("copy_of_path"), message)
    identity = F.col("found_identity") if layout == "cluster" else F.col("identity")
    source = F.when(identity.isNotNull(), F.lit("cluster" if layout == "cluster" else "folder"))
    return joined.select(
        *[c for c in frame.columns if c != "identity"],
        identity.alias("identity"),
        source.alias("identity_source"),
        "identity_distance",
        F.coalesce(F.col("identity_outlier"), F.lit(False)).alias("identity_outlier"),
    )


def with_split(frame, split: str, seed: int, known=None):
    """`frame` with `split`: train, val or test per identity (a face without one: per file). A person in
    `known` (identity, known_split) keeps the split given before; the shares decide for new people only."""
    from pyspark.sql import functions as F

    shares = parse_split(split)
    assert shares is not None  # PrepConfig checked it
    key = F.coalesce(F.col("identity"), F.col("name"), F.col("relative_path"))
    bucket = F.pmod(F.xxhash64(F.lit(seed), key), F.lit(SPLIT_BUCKETS)) / SPLIT_BUCKETS
    split_of = F.when(bucket < shares[0], "train").when(bucket < shares[0] + shares[1], "val").otherwise("test")
    if known is None:
        return frame.withColumn("split", split_of)
    joined = frame.join(F.broadcast(known), "identity", "left")
    return joined.withColumn("split", F.coalesce(F.col("known_split"), split_of)).select(*frame.columns, "split")
