"""Every GPU figure in one run, each part stopped cleanly at its own time budget (issue 18).

Runs the benchmark scripts of this folder one after another, each in its own process:
  generation-eager       vanilla SD1.5, diffusers' IP-Adapter, SAA 1 and 2 persons (boxes), with the LoRA as a
                         branch and folded into the weights, and 4 persons folded; 50 steps at 512x512, CFG
                         batch 2, fp16, and a whole image with the VAE decode
  generation-cudagraphs  vanilla and SAA 2 and 4 persons (LoRA folded) under torch.compile with CUDA graphs
  encode-persons         CLIP ViT-H + face encoder + IMR edit per person, against the denoising
  training               anchoring (with and without gradient checkpointing), reconfig, IP-Adapter peer
  captioning             InternVL3-2B-shaped captioner: plain generate at batches 32, 128 and 256, then the
                         static KV cache (compiled) at 256
  arcface                IResNet-50 (w600k_r50's shape) through ONNX Runtime
  offload                enable_model_cpu_offload against the pipeline on the GPU: same images, peak memory
Each script writes its JSON after every row. A part that runs past its budget gets SIGTERM (then
SIGKILL), and the rows it had written are kept and marked `stopped at budget`. All parts end up in
one JSON file, with the machine's description.

    benchmarks/gpu_all.sh                      # on the GPU machine: about 9 minutes on an H100
    benchmarks/gpu_all.sh --tiny               # on a CPU: tiny models, checks every part runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

EAGER_CONFIGS = "vanilla,ip-adapter,saa-1,saa-1-folded,saa-2,saa-2-folded,saa-4-folded"
# name, script, arguments on the GPU, arguments with --tiny, budget in seconds on the GPU (all: 585 s, inside a
# 15-minute lease with the start-up; an earlier H100 run of 530 s of budgets used 379 s)
PARTS = [
    (
        "generation-eager",
        "gpu_generation.py",
        ["--modes", "eager", "--decode", "--repeats", "3", "--configs", EAGER_CONFIGS],
        ["--tiny", "--steps", "2", "--modes", "eager", "--decode", "--repeats", "1", "--configs", EAGER_CONFIGS],
        100,
    ),
    (
        "generation-cudagraphs",
        "gpu_generation.py",
        ["--modes", "cudagraphs", "--configs", "vanilla,saa-2-folded,saa-4-folded", "--repeats", "3"],
        ["--tiny", "--steps", "2", "--modes", "compile", "--configs", "vanilla,saa-2", "--repeats", "1"],
        200,
    ),
    ("encode-persons", "encode_persons.py", [], ["--tiny", "--steps", "2", "--repeats", "2"], 45),
    ("training", "gpu_training.py", ["--steps", "8", "--warmup", "2"], ["--tiny", "--steps", "2", "--warmup", "1"], 75),
    (
        "captioning",
        "captioning.py",
        ["--faces", "256", "--batches", "32,128,256", "--static-batches", "256"],
        ["--tiny", "--faces", "4", "--batches", "1,4", "--static-batches", "4"],
        100,
    ),
    ("arcface", "arcface_onnx.py", ["--faces", "200"], ["--faces", "4"], 20),
    ("offload", "gpu_offload.py", [], [], 45),
]


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    except ImportError:
        pass
    for package in ("diffusers", "transformers", "onnxruntime"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def run_part(name: str, script: str, arguments: list[str], budget: float, folder: str) -> dict:
    """Run one script with --json into `folder`; stop it at `budget` seconds and keep what it wrote."""
    result_path = os.path.join(folder, f"{name}.json")
    log_path = os.path.join(folder, f"{name}.log")
    command = [sys.executable, os.path.join(HERE, script), *arguments, "--json", result_path]
    began = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=budget)
            status = "done" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = f"stopped at budget ({budget:.0f} s)"
    part = {"status": status, "seconds": round(time.perf_counter() - began, 1), "command": " ".join(command[1:])}
    if os.path.exists(result_path):
        with open(result_path) as handle:
            part["results"] = json.load(handle)
    with open(log_path) as handle:
        part["log_tail"] = handle.read()[-3000:]
    return part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU, to check every part runs")
    parser.add_argument("--parts", default=",".join(p[0] for p in PARTS), help="comma-separated part names")
    parser.add_argument("--scale-budgets", type=float, default=1.0, help="multiply every part's budget")
    parser.add_argument(
        "--out",
        default=None,
        help="the JSON file (default: $OUT/gpu_all.json on the device machine, else results-gpu[-tiny].json here)",
    )
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="gpu-all-")  # each part's own JSON and log; the report holds both
    default_name = "results-gpu-tiny.json" if args.tiny else "results-gpu.json"
    out = args.out or (
        os.path.join(os.environ["OUT"], "gpu_all.json") if os.environ.get("OUT") else os.path.join(HERE, default_name)
    )
    wanted = args.parts.split(",")
    unknown = sorted(set(wanted) - {p[0] for p in PARTS})
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(p[0] for p in PARTS)}")
    report = {"machine": machine(), "tiny": args.tiny, "parts": {}}
    began = time.perf_counter()
    for name, script, gpu_args, tiny_args, budget in PARTS:
        if name not in wanted:
            continue
        budget *= args.scale_budgets * (3 if args.tiny else 1)  # a 2-core CPU compiles slowly
        print(f"[{time.perf_counter() - began:6.0f} s] {name}: budget {budget:.0f} s", flush=True)
        part = run_part(name, script, tiny_args if args.tiny else gpu_args, budget, folder)
        report["parts"][name] = part
        print(f"[{time.perf_counter() - began:6.0f} s] {name}: {part['status']} in {part['seconds']} s", flush=True)
        with open(out, "w") as handle:  # after every part, so that a killed run still reports
            json.dump(report, handle, indent=2)
    report["total_seconds"] = round(time.perf_counter() - began, 1)
    with open(out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {out} ({report['total_seconds']} s)")
    failed = [n for n, p in report["parts"].items() if p["status"].startswith("failed")]
    if failed:
        print(f"failed parts: {', '.join(failed)} (see their log_tail in {out})")
        sys.exit(1)


if __name__ == "__main__":
    main()
