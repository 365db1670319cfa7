"""Running the stage over Spark: explicit partitions, `mapInPandas`, one model set per Python worker."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dynamicid.prep.config import PrepConfig
from dynamicid.prep.discover import InputFile
from dynamicid.prep.schema import SPARK_DDL
from dynamicid.prep.sparkenv import spark_uri

INPUT_DDL = "path string, relative string, identity string, size bigint, problem string"
COLLECT_MANIFEST = "_collect/manifest.parquet"  # what `dynamicid collect` leaves beside its photos


def task_resources():
    """The GPU (spark.task.resource.gpu.amount) and cores (spark.task.cpus) Spark gave the running task: the
    backends get them from here, so no library starts a thread per core of the whole machine."""
    from pyspark import TaskContext

    from dynamicid.faces.backends import Resources

    context = TaskContext.get()
    if context is None:
        return Resources()
    gpus = context.resources().get("gpu")
    return Resources(gpu=int(gpus.addresses[0]) if gpus and gpus.addresses else None, threads=int(context.cpus()))


def _process_partition(config: PrepConfig):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from dynamicid.prep.process import stage_for

        # Models load once per Python worker, then serve every batch.
        stage = stage_for(config, task_resources()).setup()
        for batch in batches:
            yield stage.process_batch(batch)

    return run


class _SparkProgress:
    """Drives a tqdm bar from Spark's status tracker; Spark only reports finished tasks."""

    def __init__(self, spark, total_images: int, partitions: int, enabled: bool, label: str = "prep"):
        self.tracker = spark.sparkContext.statusTracker()
        self.partitions = partitions
        self.per_partition = total_images / max(partitions, 1)
        self.total = total_images
        self.enabled = enabled
        self.label = label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="img", desc=self.label, dynamic_ncols=True)
            self._thread.start()
        return self

    def _completed_tasks(self) -> int:
        best = 0
        for stage_id in self.tracker.getActiveStageIds():
            info = self.tracker.getStageInfo(stage_id)
            if info and info.numTasks == self.partitions:
                best = max(best, info.numCompletedTasks)
        return best

    def _loop(self):
        while not self._stop.wait(0.5):
            done = min(self.total, round(self._completed_tasks() * self.per_partition))
            if done > self.bar.n:
                self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
            if exc[0] is None:
                self.bar.update(self.total - self.bar.n)
            self.bar.close()


LISTING_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("relative", pa.string()),
        ("identity", pa.string()),
        ("size", pa.int64()),
        ("problem", pa.string()),
    ]
)


def write_listing(files: Iterable[InputFile], path: str, batch_rows: int = 65536) -> int:
    """The listing as one Parquet file, written a batch at a time as the files are found, so the driver never
    holds it; Spark then reads it from there (OUTPUT is on a filesystem every worker sees). Returns the count."""
    count, batch = 0, []
    with pq.ParquetWriter(path, LISTING_SCHEMA, compression="zstd") as writer:
        for item in files:
            batch.append(item)
            if len(batch) == batch_rows:
                writer.write_table(_listing_table(batch))
                count, batch = count + len(batch), []
        if batch or count == 0:
            writer.write_table(_listing_table(batch))
            count += len(batch)
    return count


def _listing_table(batch: list[InputFile]) -> pa.Table:
    columns = [[getattr(item, name) for item in batch] for name in LISTING_SCHEMA.names]
    return pa.Table.from_arrays(
        [pa.array(values, type=field.type) for values, field in zip(columns, LISTING_SCHEMA)], schema=LISTING_SCHEMA
    )


GIVEN_CAPTION_COLUMNS = [("path", "string"), ("status", "string"), ("caption", "string")]  # of collect's manifest


def with_given_captions(spark, frame, input_path: str, work_dir: str):
    """The listing with `given_caption`: the caption the URL list gave each photo, when INPUT is collect's
    output (its manifest names each photo by its path under INPUT); null otherwise."""
    from pyspark.sql import functions as F

    from dynamicid.prep.schema import read_checked_parquet

    manifest = os.path.join(input_path, COLLECT_MANIFEST)
    if "://" in input_path or not os.path.exists(manifest):
        return frame.withColumn("given_caption", F.lit(None).cast("string"))
    captions = (
        read_checked_parquet(spark, manifest, GIVEN_CAPTION_COLUMNS, work_dir, "move it aside to read no captions")
        .where("status = 'ok' AND path IS NOT NULL AND caption IS NOT NULL AND trim(caption) != ''")
        .select(F.col("path").alias("captioned_path"), F.col("caption").alias("given_caption"))
    )
    joined = frame.join(captions, frame.relative == captions.captioned_path, "left")
    return joined.drop("captioned_path")


def run_stage_on_spark(spark, listing_path: str, count: int, config: PrepConfig, rows_uri: str) -> float:
    """Process every file of the listing (`write_listing`); the rows land as Parquet under `rows_uri`.
    Returns the job's seconds."""
    # A task costs ~150 ms of scheduling in local mode, so tasks are large (32 images by default); but
    # keep at least 4 per core so small inputs still spread over every core and the progress bar moves.
    cores = spark.sparkContext.defaultParallelism
    partitions = min(count, max(math.ceil(count / config.images_per_partition), 4 * cores))
    # Spark reads the listing itself, so it never passes through the driver's Python process; round-robin
    # then gives every task an equal share.
    frame = spark.read.schema(INPUT_DDL).parquet(spark_uri(listing_path))
    frame = with_given_captions(spark, frame, config.input, os.path.dirname(listing_path)).repartition(partitions)
    result = frame.mapInPandas(_process_partition(config), schema=SPARK_DDL)
    started = time.perf_counter()
    with _SparkProgress(spark, count, partitions, config.progress):
        result.write.mode("overwrite").parquet(rows_uri)
    return time.perf_counter() - started
