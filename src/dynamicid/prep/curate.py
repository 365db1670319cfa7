"""Curation after the job, on the whole manifest, in Spark (the driver never holds it):

- exact duplicates: files with the same bytes (sha256). The first by path keeps its faces; the others'
  kept faces become `rejected`, reason `duplicate`, with `duplicate_of` naming the kept file, and the
  message says when the copy sits under another identity (the same photo as two people);
- identity-disjoint splits: every face of one identity gets the same `split` (train, val or test), from a
  seeded hash of the identity, so evaluation never sees a training identity.
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


def curate(frame, split: str, seed: int):
    """The manifest (a Spark DataFrame) with duplicates rejected and `duplicate_of` and `split` added."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    files = frame.select("sha256", "relative_path", "identity").where(F.col("sha256").isNotNull()).distinct()
    first = Window.partitionBy("sha256").orderBy("relative_path")
    kept = files.withColumn("rank", F.row_number().over(first)).where(F.col("rank") == 1)
    kept = kept.select("sha256", F.col("relative_path").alias("kept_path"), F.col("identity").alias("kept_identity"))
    joined = frame.join(kept, "sha256", "left")
    copy = (F.col("status") == "ok") & F.col("kept_path").isNotNull() & (F.col("relative_path") != F.col("kept_path"))
    elsewhere = ~F.col("identity").eqNullSafe(F.col("kept_identity"))
    message = F.concat(
        F.lit("the same file as "),
        F.col("kept_path"),
        F.when(
            elsewhere,
            F.concat(
                F.lit(" under another identity ("),
                F.coalesce(F.col("kept_identity"), F.lit("none")),
                F.lit("): the same photo cannot be two people; check both"),
            ),
        ).otherwise(F.lit("")),
    )
    shares = parse_split(split)
    assert shares is not None  # PrepConfig checked it
    key = F.coalesce(F.col("identity"), F.col("name"), F.col("relative_path"))
    bucket = F.pmod(F.xxhash64(F.lit(seed), key), F.lit(SPLIT_BUCKETS)) / SPLIT_BUCKETS
    split_of = F.when(bucket < shares[0], "train").when(bucket < shares[0] + shares[1], "val").otherwise("test")
    return joined.select(
        *[c for c in frame.columns if c not in ("status", "reason", "message")],
        F.when(copy, F.lit("rejected")).otherwise(F.col("status")).alias("status"),
        F.when(copy, F.lit("duplicate")).otherwise(F.col("reason")).alias("reason"),
        F.when(copy, message).otherwise(F.col("message")).alias("message"),
        F.when(copy, F.col("kept_path")).alias("duplicate_of"),
        split_of.alias("split"),
    ).select(*frame.columns, "duplicate_of", "split")
