"""`run_prep`: list, process on Spark, merge the manifest, report."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dynamicid.errors import DynamicIDError
from dynamicid.faces.record import write_dataset_record
from dynamicid.prep import card, curate, outputs, people, report, review
from dynamicid.prep.config import PrepConfig
from dynamicid.prep.discover import is_local, list_input
from dynamicid.prep.guard import OutputLock, PrepError, check_paths, check_writable
from dynamicid.prep.schema import MANIFEST_COLUMNS, SPARK_DDL, arrow_schema, spark_ddl
from dynamicid.prep.sparkenv import spark_uri
from dynamicid.prep.verify import place_faces, remove_unlisted

logger = logging.getLogger(__name__)

__all__ = ["PrepError", "PrepResult", "run_prep"]


@dataclass
class PrepResult:
    manifest_path: str
    contact_sheet: str | None
    summary: dict

    def manifest(self) -> pd.DataFrame:
        return pd.read_parquet(self.manifest_path)


def check_backends(config: PrepConfig) -> PrepConfig:
    """Resolve every model reference (a Hugging Face repo id becomes its cached folder, once, here on the
    driver) and build every backend once, so a missing model fails before any image. Returns the config
    with local model paths, which the workers receive."""
    from dataclasses import replace

    from dynamicid.faces import FaceAnalyzer
    from dynamicid.faces.backends import BackendError, create
    from dynamicid.faces.backends.base import resolve_model

    try:
        faces = config.faces
        faces = replace(
            faces,
            **{
                field: resolve_model(getattr(faces, field), field.replace("_", " "))
                for field in ("detector_model", "landmarks_model", "embedder_model")
            },
        )
        config = replace(config, faces=faces, captioner_model=resolve_model(config.captioner_model, "captioner model"))
        FaceAnalyzer(config.faces)
        create("captioner", config.captioner, config.captioner_model, **config.captioner_options())
    except BackendError as err:
        raise PrepError(str(err)) from None
    return config


# Row groups of about 8 MB: readers (the report, the contact sheet, training) then hold one small group at a
# time; Spark's default of 128 MB made one group of a 100,000-row manifest, read whole by every reader.
MANIFEST_ROW_GROUP_BYTES = 8 * 1024 * 1024


def merge_rows(spark, rows_dir: str, manifest_path: str, config: PrepConfig | None = None) -> dict:
    """Gather the job's Parquet parts into one manifest sorted by relative path and face, replaced atomically,
    curated (`curate`) when `config` is given, with the dataset's people (`people`) kept beside it. Returns
    what the summary says of the people.

    Spark reads, sorts (spilling to disk as it needs) and writes one file, so the driver's Python process
    never holds the manifest: its memory does not grow with the corpus (the curation's embeddings aside)."""
    table = spark.read.schema(SPARK_DDL).parquet(spark_uri(rows_dir))
    if config is None:
        write_one_parquet(table.orderBy("relative_path", "face_index"), manifest_path)
        return {}
    output = os.path.dirname(os.path.abspath(manifest_path))
    earlier = people.read_earlier_run(output)
    found = _find_identities(rows_dir, config, earlier)
    findings_path = os.path.join(os.path.dirname(rows_dir.rstrip("/")), "findings.parquet")
    schema = arrow_schema(curate.FINDINGS_COLUMNS)
    pq.write_table(pa.Table.from_pandas(found.frame, schema, False), findings_path)
    findings = spark.read.schema(spark_ddl(curate.FINDINGS_COLUMNS)).parquet(spark_uri(findings_path))
    known = spark.createDataFrame(list(earlier.known_splits().items()), "identity string, known_split string")
    curated = curate.with_findings(curate.mark_exact_duplicates(table, findings), findings, config.layout)
    curated = curate.with_split(curated, config.split, config.split_seed, known)
    write_one_parquet(curated.select(*MANIFEST_COLUMNS).orderBy("relative_path", "face_index"), manifest_path)
    return _record_people(output, manifest_path, earlier, found, config.split)


@dataclass
class _Found:
    frame: pd.DataFrame  # the findings, one row per kept face
    suggestions: list[dict]
    next_number: int


def _find_identities(rows: str, config: PrepConfig, earlier) -> _Found:
    """The driver's part of curation: near copies, clusters and their people, distances (`identities`), with
    the dataset's review decisions honoured (`review`)."""
    from dynamicid.faces.identity_thresholds import thresholds_for
    from dynamicid.prep import identities
    from dynamicid.prep.neighbours import read_face_vectors
    from dynamicid.prep.review import face_key, load_verdicts

    thresholds = thresholds_for(
        config.faces.embedder, config.same_person_cosine, config.near_copy_cosine, config.cluster_cosine
    )
    verdicts = load_verdicts(config.output)
    faces = read_face_vectors(rows)
    keys = [face_key(*key) for key in faces.keys()]
    decided = [verdicts.resolve(key, identity) for key, identity in zip(keys, faces.identity)]
    cluster = config.layout == "cluster"
    if not cluster:  # a labelled face a review moved belongs to its new person from here on
        faces.identity = [person for person, _, _ in decided]
    named: list[people.ClusterNames] = []

    def namer(label):
        named.append(people.name_clusters(faces.keys(), label, earlier))
        decided[:] = [verdicts.resolve(key, name) for key, name in zip(keys, named[0].names)]
        return [person for person, _, _ in decided]

    found = identities.find_identities(faces, thresholds, cluster, seed=config.split_seed, namer=namer)
    frame = identities.findings_frame(faces, found)
    frame["reviewed"] = [reviewed for _, reviewed, _ in decided]
    if not cluster:
        frame["found_identity"] = [person if reviewed else None for person, reviewed, _ in decided]
    rejected = [why is not None for _, _, why in decided]
    frame.loc[rejected, "rejection"] = "rejected_in_review"
    frame.loc[rejected, "rejection_message"] = [why for _, _, why in decided if why is not None]
    suggestions = [
        pair
        for pair in (named[0].suggestions if named else [])
        if frozenset((pair["a"], pair["b"])) not in verdicts.apart
    ]
    return _Found(frame, suggestions, named[0].next_number if named else earlier.next_number())


def _record_people(output: str, manifest_path: str, earlier, found: _Found, shares: str) -> dict:
    """Writes the people table from the new manifest; returns the summary's counts."""
    counts, sources = people.manifest_people(manifest_path)
    centres = people.manifest_centres(manifest_path)
    table = people.updated_table(earlier, counts, centres, sources, shares, found.next_number)
    people.write_people(output, table, found.suggestions)
    new = sorted(set(counts) - set(earlier.table.people) - set(earlier.split_of))
    changed = earlier.table.shares not in (None, shares)
    if changed:
        logger.warning(
            "the split shares changed from %s to %s: they apply to new people only; everyone already in the "
            "dataset keeps their split",
            earlier.table.shares,
            shares,
        )
    return {
        "new_people": len(new),
        "suggested_merges": len(found.suggestions),
        "split_shares_changed": changed,
    }


def write_one_parquet(frame, path: str) -> None:
    """`frame` (sorted as it should be read) as one Parquet file at `path`, replaced atomically; Spark writes
    it, so the driver's Python process never holds the rows."""
    staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    (
        frame.coalesce(1)
        .write.option("compression", "zstd")
        .option("parquet.block.size", MANIFEST_ROW_GROUP_BYTES)
        .parquet(spark_uri(staging))
    )
    parts = [name for name in os.listdir(staging) if name.endswith(".parquet")]
    if len(parts) != 1:
        raise PrepError(f"writing {path} gave {len(parts)} files in {staging}, expected one")
    os.replace(os.path.join(staging, parts[0]), path)
    shutil.rmtree(staging, ignore_errors=True)


def run_prep(config: PrepConfig, spark=None) -> PrepResult:
    """List INPUT, process every file on Spark, then write the manifest, remove outputs no row lists, and
    report. Everything that can be checked without an image is checked first."""
    started = time.perf_counter()
    if not is_local(config.output):
        raise PrepError(f"the output must be a local or shared-filesystem folder, not {config.output}")
    if is_local(config.input) and not os.path.exists(config.input):
        raise PrepError(f"input not found: {config.input}")
    output = os.path.abspath(config.output)
    if os.path.isfile(output):
        raise PrepError(f"the output {output} is a file; give a folder")
    skip = check_paths(config.input, output) if is_local(config.input) else None
    check_writable(output)
    config = _with_output(config, output)
    with OutputLock(output):
        requested_faces = config.faces  # as given (repo ids stay ids): what the data's record says
        config = check_backends(config)
        outputs.remove_temporaries(output)
        if spark is None:
            from dynamicid.prep.sparkenv import build_session

            spark = build_session(config.master)
        place_faces(output, back=True)
        job_seconds, manifest_path, people_counts = _process_and_merge(
            spark, list_input(config.input, config.layout, spark, skip), config, output
        )
        place_faces(output)
        removed = remove_unlisted(output, manifest_path)
        review.cleared_after_prep(output)
        tally = report.tally_manifest(manifest_path, config.contact_sheet_faces)
        sheet = report.contact_sheet(tally, output, limit=config.contact_sheet_faces, manifest_path=manifest_path)
        summary = tally.summary(job_seconds, time.perf_counter() - started)
        summary |= {"stale_outputs_removed": removed} | people_counts
        report.write_summary(summary, output)
        write_dataset_record(output, requested_faces)
        card.write_card(output, manifest_path, summary, requested_faces, config.captioner)
    return PrepResult(manifest_path, sheet, summary)


@contextlib.contextmanager
def _disk_full_reported(output: str):
    """A full disk fails a Spark task deep in Java (or in a Python worker); the driver sees it wrapped in
    Spark's exceptions. It is the user's to fix, said once."""
    try:
        yield
    except DynamicIDError:
        raise
    except Exception as err:
        if "No space left on device" not in str(err) and getattr(err, "errno", None) != errno.ENOSPC:
            raise
        raise PrepError(
            f"no space left on the device that holds {output}: free some space there (or choose another OUTPUT), "
            "then rerun the same command. The outputs written so far are whole, and the rerun resumes from them."
        ) from None


def _process_and_merge(spark, files, config: PrepConfig, output: str) -> tuple[float, str, dict]:
    """Streams the listing to OUTPUT/_state/runs/<id>/listing.parquet, runs the job on it, merges the rows."""
    from dynamicid.prep.spark_job import run_stage_on_spark, write_listing

    run_dir = os.path.join(output, outputs.STATE_DIR, "runs", uuid.uuid4().hex[:12])
    os.makedirs(run_dir)
    try:
        listing = os.path.join(run_dir, "listing.parquet")
        count = write_listing(files, listing)
        if count == 0:
            raise PrepError(f"no files found under {config.input}")
        rows_dir = os.path.join(run_dir, "rows")
        manifest_path = os.path.join(output, "manifest.parquet")
        with _disk_full_reported(output):
            job_seconds = run_stage_on_spark(spark, listing, count, config, spark_uri(rows_dir))
            people_counts = merge_rows(spark, rows_dir, manifest_path, config)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return job_seconds, manifest_path, people_counts


def _with_output(config: PrepConfig, output: str) -> PrepConfig:
    from dataclasses import replace

    return replace(config, output=output)
