"""`prep` as separate processes: killed with SIGKILL mid-run and resumed; and on a real Spark
standalone cluster (a master and two workers on 127.0.0.1) that loses a worker mid-job."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dynamicid.prep import outputs
from dynamicid.prep.config import PrepConfig
from dynamicid.prep.runner import run_prep

pytestmark = pytest.mark.slow

ENV = os.environ | {"SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}


def make_input(shared_faces: Path, target: Path, copies: int) -> Path:
    """Copies of the identity photos under distinct names: the same faces (the same pixels), more files. Each
    copy's bytes differ by a comment, so prep's curation does not reject them as duplicate files."""
    for photo in sorted((shared_faces / "identities").rglob("*.*")):
        person = photo.parent.name
        (target / person).mkdir(parents=True, exist_ok=True)
        data = photo.read_bytes()
        for k in range(copies):
            (target / person / f"c{k}_{photo.name}").write_bytes(_with_comment(data, f"copy {k}".encode()))
    return target


def _with_comment(data: bytes, comment: bytes) -> bytes:
    """A JPEG COM segment after SOI, or a PNG tEXt chunk after IHDR: other bytes, the same pixels."""
    import zlib

    if data[:2] == b"\xff\xd8":
        return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    payload = b"Comment\x00" + comment
    chunk = len(payload).to_bytes(4, "big") + b"tEXt" + payload + zlib.crc32(b"tEXt" + payload).to_bytes(4, "big")
    return data[:33] + chunk + data[33:]


def prep_command(input_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dynamicid.cli",
        "prep",
        str(input_dir),
        str(output_dir),
        "--no-progress",
        "--images-per-partition",
        "2",
        *extra,
    ]


def records(output_dir: Path) -> list[str]:
    """The completion records written so far; os.walk skips folders Spark removes while we look."""
    found = []
    for folder, _, names in os.walk(output_dir / outputs.STATE_DIR):
        found += [os.path.join(folder, name) for name in names if name.endswith(".json")]
    return found


def wait_for_records(output_dir: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while len(records(output_dir)) < count:
        assert process.poll() is None, "the job ended before it could be interrupted"
        assert time.time() < deadline, "no progress"
        time.sleep(0.2)


def check_no_partial_outputs(output_dir: Path) -> None:
    for path in (output_dir / "images").rglob("*"):
        if ".tmp-" in path.name or path.is_dir():
            continue
        if path.suffix == ".jpg":
            Image.open(path).load()
        elif path.suffix == ".png":
            assert Image.open(path).size == (608, 512)
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)
        elif path.suffix == ".txt":
            assert path.read_text().endswith("\n")


def embeddings_by_file(output_dir: Path) -> dict[str, np.ndarray]:
    """The embedding of every face with files: kept (under images/), or a duplicate curation rejected (its files
    set aside under _state/, in the folder the job wrote them to)."""
    manifest = pd.read_parquet(output_dir / "manifest.parquet")

    def pt(row) -> str:
        if row.status == "ok":
            return outputs.face_paths(str(output_dir), row.identity, row.name)["pt"]
        return outputs.face_paths(str(output_dir), row.input_identity, row.name, set_aside=True)["pt"]

    return {
        row.relative_path: torch.load(pt(row), weights_only=True)["embedding"].numpy()
        for row in manifest[(manifest.status == "ok") | (manifest.reason == "duplicate")].itertuples()
    }


def test_killed_run_resumes_to_complete_outputs(shared_faces, tmp_path):
    source = make_input(shared_faces, tmp_path / "in", copies=2)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    out = tmp_path / "out"
    process = subprocess.Popen(
        prep_command(source, out), env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_records(out, 6, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver, its JVM and the Python workers
        process.wait()
    done_before = len(records(out))
    assert 0 < done_before < len(files)
    assert not (out / "manifest.parquet").exists()
    check_no_partial_outputs(out)

    rerun = subprocess.run(prep_command(source, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from earlier runs" in rerun.stdout
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == len(files) and manifest.relative_path.is_unique
    # Each photo's second copy is the near copy of its first (other bytes, the same pixels), and obama/5_240p.jpg
    # is obama/1.jpg shrunk: 15 kept.
    assert (manifest.status == "ok").sum() == len(files) // 2 - 1 and (
        manifest.reason[manifest.status != "ok"] == "duplicate"
    ).all()
    assert manifest.resumed.sum() >= done_before - 2  # a record may land between the kill signal and exit
    assert not list(out.rglob("*.tmp-*"))
    written = sorted(p.name for p in (out / "images").rglob("*") if p.is_file())  # the kept faces alone
    assert len(written) == 4 * (manifest.status == "ok").sum() and len(set(written)) == len(written)
    set_aside = sorted(p.name for p in (out / "_state" / "set_aside").rglob("*") if p.is_file())
    assert len(set_aside) == 4 * (manifest.status != "ok").sum() and not set(set_aside) & set(written)
    check_no_partial_outputs(out)
    # Copies of one photo give the same embedding, whichever run produced them.
    vectors = embeddings_by_file(out)
    for path, vector in vectors.items():
        person, name = path.split("/")
        np.testing.assert_allclose(vector, vectors[f"{person}/c0_{name[3:]}"], atol=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandaloneCluster:
    """A Spark master and workers started from the scripts that ship inside the pyspark package."""

    def __init__(self, workdir: Path, workers: int = 2):
        import pyspark

        self.home = os.path.dirname(pyspark.__file__)
        self.env = ENV | {"SPARK_HOME": self.home, "SPARK_NO_DAEMONIZE": "1"}
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.master = self._start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(_free_port()),
        )
        self._wait_for(self.workdir / "master.log", "I have been elected leader")
        self.workers = [
            self._start(
                f"worker{i}",
                "org.apache.spark.deploy.worker.Worker",
                self.url,
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "2g",
                "--webui-port",
                str(_free_port()),
                "--work-dir",
                str(workdir / f"work{i}"),
            )
            for i in range(workers)
        ]
        for i in range(workers):
            self._wait_for(self.workdir / f"worker{i}.log", "Successfully registered with master")

    def _start(self, name: str, main_class: str, *args: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        return subprocess.Popen(
            [os.path.join(self.home, "bin", "spark-class"), main_class, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_for(self, log: Path, text: str, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while text not in log.read_text(errors="replace"):
            assert time.time() < deadline, f"{log.name} never said {text!r}:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)

    def kill_worker(self, index: int) -> None:
        os.killpg(self.workers[index].pid, signal.SIGKILL)  # the worker and its executor
        self.workers[index].wait()

    def stop(self) -> None:
        for process in [*self.workers, self.master]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_cluster_job_survives_a_lost_worker_with_the_same_outputs_as_local(shared_faces, tmp_path, spark):
    source = make_input(shared_faces, tmp_path / "in", copies=2)
    total = sum(1 for p in source.rglob("*") if p.is_file())
    cluster = StandaloneCluster(tmp_path)
    try:
        out = tmp_path / "cluster_out"
        job = subprocess.Popen(
            prep_command(source, out, "--master", cluster.url),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for_records(out, 4, job)
        cluster.kill_worker(0)
        assert len(records(out)) < total, "the job finished before the worker was lost"
        log, _ = job.communicate(timeout=480)
        assert job.returncode == 0, log[-3000:]
    finally:
        cluster.stop()

    local_out = tmp_path / "local_out"  # the same settings in this process's local Spark
    run_prep(PrepConfig(input=str(source), output=str(local_out), images_per_partition=2, progress=False), spark)

    columns = ["relative_path", "status", "reason", "identity", "name", "face_prompt", "caption"]
    on_cluster = pd.read_parquet(out / "manifest.parquet")
    on_local = pd.read_parquet(local_out / "manifest.parquet")
    pd.testing.assert_frame_equal(on_cluster[columns], on_local[columns])
    cluster_vectors, local_vectors = embeddings_by_file(out), embeddings_by_file(local_out)
    assert cluster_vectors.keys() == local_vectors.keys()
    for key, vector in cluster_vectors.items():
        np.testing.assert_allclose(vector, local_vectors[key], atol=1e-5)
    assert not list(out.rglob("*.tmp-*"))


def test_spark_submit_runs_the_same_job(sample, tmp_path):
    """spark-submit owns --master; the job must take it from there."""
    import pyspark

    from dynamicid import cli

    folder, expected = sample
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    result = subprocess.run(
        [
            submit,
            "--master",
            "local[2]",
            "--conf",
            f"spark.pyspark.python={sys.executable}",
            cli.__file__,
            "prep",
            str(folder),
            str(tmp_path / "out"),
            "--no-progress",
        ],
        env=ENV | {"PYSPARK_PYTHON": sys.executable, "SPARK_HOME": os.path.dirname(pyspark.__file__)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert sorted(manifest.relative_path) == sorted(expected)
    assert "prep finished" in result.stdout
