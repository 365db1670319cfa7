"""Every benchmark in benchmarks/ runs, in a tiny form (issue 35 §8: driver_scale.py had stopped running when
curation added columns, and nobody noticed). Each runs in this process, as `python benchmarks/NAME.py ARGS`
would, on the suite's Spark session (a benchmark's own `spark.stop()` is kept from stopping it), and must
write its figures. gpu_all.py has its own test (test_gpu_all.py)."""

import json
import os
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _cases(faces: Path, tmp: Path) -> dict[str, list[str]]:
    """Each benchmark's arguments for a tiny run that still goes through all of its code."""
    photo = str(faces / "identities/obama/1.jpg")
    corpus = tmp / "corpus"
    return {
        "arcface_onnx": ["--faces", "2"],
        "backends_throughput": ["--cores", "1", "--copies", "1", "--sources", "2"],
        "captioning": ["--tiny", "--faces", "2", "--new-tokens", "2", "--batches", "1,2", "--static-batches", "2"],
        "cluster_scale": ["--sizes", "2000"],
        "clustering": ["--embedders", "dlib-resnet", "--grid", "0.05"],
        "collect_throughput": ["40", "1"],
        "driver_scale": ["--rows", "300", "--dim", "512"],
        "encode_persons": ["--tiny", "--repeats", "1", "--steps", "1"],
        "expression_speed": ["--repeats", "1"],
        "gpu_generation": ["--tiny", "--steps", "1", "--repeats", "1", "--warmup", "0"],
        "gpu_offload": [],
        "gpu_training": ["--tiny", "--steps", "1", "--warmup", "0", "--batch", "1", "--targets", "2"],
        "identity_outcomes": ["--people", "2"],
        "identity_thresholds": [],
        "lora_fusion": ["--tiny", "--repeats", "1"],
        "make_corpus": [str(corpus), "--images", "4", "--workers", "1", "--sources", str(faces / "identities")],
        "pose_bias": [str(faces), str(tmp / "pose.json")],
        "rerun_stability": ["--rounds", "2", "--no-baseline"],
        "prep_throughput": [str(corpus), "--cores", "1", "--images", "4", "--skip-single", "--skip-pool"],
        "serve_overhead": [photo],
        "watermark_cost": ["--tiny", "--steps", "1", "--side", "64"],
        "watermark_robustness": ["--photos", "1", "--unmarked", "4", "--workers", "1", "--side", "256"],
        "training_data_path": ["--steps", "2", "--warmup", "1", "--resolution", "64", "--batch-size", "1"],
    }


def test_every_benchmark_has_a_tiny_form():
    listed = {path.stem for path in BENCHMARKS.glob("*.py")} - {"benchmarks_common", "gpu_all"}
    assert listed == set(_cases(Path("f"), Path("t"))), "give each benchmark a tiny form here"


class _KeptSession:
    """The suite's Spark session as a benchmark gets it: everything passes through but `stop`."""

    def __init__(self, spark):
        self._spark = spark

    def __getattr__(self, name):
        return getattr(self._spark, name)

    def stop(self) -> None:
        pass


def _needs_spark(name: str) -> bool:
    return "sparkenv" in (BENCHMARKS / f"{name}.py").read_text()


@pytest.mark.slow  # every benchmark, tiny
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.xdist_group("spark")] if _needs_spark(name) else [])
        for name in sorted(_cases(Path("f"), Path("t")))
    ],
)
def test_the_benchmark_runs_in_its_tiny_form(name, request, shared_faces, tmp_path, monkeypatch, capsys):
    from dynamicid.prep import sparkenv

    recorded = {path: path.stat().st_mtime_ns for path in BENCHMARKS.glob("results-*.json")}
    monkeypatch.setenv("DYNAMICID_BENCHMARK_RESULTS", str(tmp_path))  # the measured figures stay as they are
    argv = _cases(shared_faces, tmp_path)[name]
    if name == "prep_throughput":  # its corpus comes from make_corpus
        _run(monkeypatch, "make_corpus", _cases(shared_faces, tmp_path)["make_corpus"])
    if _needs_spark(name):
        spark = request.getfixturevalue("spark")
        monkeypatch.setattr(sparkenv, "build_session", lambda *args, **kwargs: _KeptSession(spark))
    else:  # a benchmark that starts Spark without saying so fails here
        monkeypatch.setattr(sparkenv, "build_session", lambda *args, **kwargs: pytest.fail(f"{name} started Spark"))
    json_args = ["--json", str(tmp_path / "out.json")] if "--json" in (BENCHMARKS / f"{name}.py").read_text() else []
    _run(monkeypatch, name, argv + json_args)
    printed = capsys.readouterr().out
    written = tmp_path / "out.json"
    assert printed.strip() or written.exists(), f"{name} reported nothing"
    if written.exists():
        assert json.loads(written.read_text()), name
    assert {path: path.stat().st_mtime_ns for path in BENCHMARKS.glob("results-*.json")} == recorded, name


def _run(monkeypatch, name: str, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py"), *argv])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.chdir(os.getcwd())
    try:
        runpy.run_path(str(BENCHMARKS / f"{name}.py"), run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (None, 0), f"{name} exited with {stop.code}"
