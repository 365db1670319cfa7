"""benchmarks/gpu_all.py on the CPU with tiny models: every part it runs reports rows, and a part
stopped at its budget keeps what it wrote (the GPU run depends on both)."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "benchmarks", "gpu_all.py")
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
import gpu_all  # noqa: E402  (the part list the run uses)

pytestmark = pytest.mark.slow


def run_gpu_all(tmp_path, *arguments):
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run(
        [sys.executable, SCRIPT, "--tiny", "--out", str(out), *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    return done, json.loads(out.read_text())


def test_tiny_parts_report_their_rows(tmp_path):
    done, report = run_gpu_all(tmp_path, "--parts", "generation-eager,encode-persons")
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["tiny"] is True and report["machine"]["cpus"] == os.cpu_count()
    eager = report["parts"]["generation-eager"]
    assert eager["status"] == "done"
    rows = eager["results"]["results"]
    assert [r["config"] for r in rows] == gpu_all.EAGER_CONFIGS.split(",")
    assert all(r["seconds"] > 0 for r in rows) and rows[0]["vs_vanilla"] == 1.0
    encode = report["parts"]["encode-persons"]["results"]["results"][0]
    assert {"clip_image_ms", "face_encoder_ms", "face_edit_ms", "denoise_saa2_ms"} <= set(encode)


def test_a_part_past_its_budget_is_stopped_and_reported(tmp_path):
    done, report = run_gpu_all(tmp_path, "--parts", "training", "--scale-budgets", "0.02")
    part = report["parts"]["training"]
    assert part["status"].startswith("stopped at budget"), part
    assert part["seconds"] < 20  # stopped near its 5.4 s budget, not run to the end
    assert done.returncode == 0  # a stopped part is not a failure: the run goes on to the next part


def test_an_unknown_part_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, SCRIPT, "--tiny", "--parts", "nope", "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "unknown part(s) nope" in done.stderr
