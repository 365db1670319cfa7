"""ArcFace R50-sized embedding through ONNX Runtime against dlib's ResNet descriptor (issue 4).

Builds an IResNet-50 graph (InsightFace's w600k_r50 architecture: 3x3 stem, [3, 4, 14, 3]
pre-activation blocks of 64/128/256/512 channels, PReLU, a 25088 -> 512 embedding layer) with random
weights, named and shaped as buffalo_l's file (input 112x112, output 512, batch dimension free), and
times, in one process on the same aligned face:
  dlib      the default embedder (dlib's 128-d ResNet descriptor), one face per call
  arcface   our InsightFaceEmbedder (crop on five points, normalise, run), one face per call,
            with 1 thread (what a Spark task gets) and with every core
  network   the bare ONNX network on batches of 32 (what a batched GPU stage would see)
On a machine with onnxruntime-gpu the CUDA provider is used and labelled as such.

    python benchmarks/arcface_onnx.py --faces 200
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def iresnet50_onnx(path: str, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], {}
    count = iter(range(10**6))

    def name(prefix):
        return f"{prefix}_{next(count)}"

    def conv(x, cin, cout, k, stride):
        w = name("w")
        b = name("b")
        weights[w] = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(1.0 / (cin * k * k))).astype(np.float32)
        weights[b] = np.zeros(cout, np.float32)
        out = name("conv")
        nodes.append(
            helper.make_node("Conv", [x, w, b], [out], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        )
        return out

    def batchnorm(x, channels):
        params = [name(p) for p in ("scale", "bias", "mean", "var")]
        weights[params[0]] = np.ones(channels, np.float32)
        weights[params[1]] = np.zeros(channels, np.float32)
        weights[params[2]] = np.zeros(channels, np.float32)
        weights[params[3]] = np.ones(channels, np.float32)
        out = name("bn")
        nodes.append(helper.make_node("BatchNormalization", [x, *params], [out], epsilon=1e-5))
        return out

    def prelu(x, channels):
        slope = name("slope")
        weights[slope] = np.full((channels, 1, 1), 0.25, np.float32)
        out = name("prelu")
        nodes.append(helper.make_node("PRelu", [x, slope], [out]))
        return out

    def block(x, cin, cout, stride):
        # Pre-activation: BN, conv (BN folded in), PReLU, strided conv (BN folded in), plus the shortcut.
        y = batchnorm(x, cin)
        y = prelu(conv(y, cin, cout, 3, 1), cout)
        y = conv(y, cout, cout, 3, stride)
        shortcut = conv(x, cin, cout, 1, stride) if stride != 1 or cin != cout else x
        out = name("add")
        nodes.append(helper.make_node("Add", [y, shortcut], [out]))
        return out

    x = prelu(conv("input.1", 3, 64, 3, 1), 64)
    channels = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 14), (512, 3)):
        for index in range(blocks):
            x = block(x, channels, planes, 2 if index == 0 else 1)
            channels = planes
    x = batchnorm(x, 512)
    flat = name("flat")
    nodes.append(helper.make_node("Flatten", [x], [flat]))
    weights["fc_w"] = (rng.standard_normal((512 * 7 * 7, 512)) * np.sqrt(1.0 / (512 * 49))).astype(np.float32)
    weights["fc_b"] = np.zeros(512, np.float32)
    nodes.append(helper.make_node("Gemm", [flat, "fc_w", "fc_b"], ["683"]))
    graph = helper.make_graph(
        nodes,
        "iresnet50",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def per_face_ms(fn, faces: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(faces):
        fn()
    return (time.perf_counter() - started) * 1000 / faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=200, help="faces timed per configuration")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import importlib.util

    import onnxruntime

    from dynamicid.faces.backends.insightface_backend import OnnxModel

    folder = tempfile.mkdtemp(prefix="arcface-bench-")
    path = os.path.join(folder, "w600k_r50.onnx")
    iresnet50_onnx(path)
    provider = "CUDA" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "CPU"
    print(
        f"IResNet-50 ONNX graph: {os.path.getsize(path) / 2**20:.0f} MiB, provider {provider}, "
        f"{os.cpu_count()} cores, onnxruntime {onnxruntime.__version__}"
    )
    results = {"provider": provider, "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__}
    # The whole embedder (crop on five points from dlib's landmarks) needs dlib; the GPU machine has none,
    # so there only the network is timed.
    if importlib.util.find_spec("dlib") is not None:
        results.update(embedder_rows(path, folder, args.faces))
    single = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    batch = np.random.default_rng(0).standard_normal((32, 3, 112, 112)).astype(np.float32)
    network = OnnxModel(path, threads=os.cpu_count())
    results["network_batch1_ms_per_face"] = per_face_ms(lambda: network.run(single), args.faces)
    results["network_batch32_ms_per_face"] = per_face_ms(lambda: network.run(batch), max(1, args.faces // 32)) / 32
    for key, value in results.items():
        if key.endswith("_ms") or key.endswith("_per_face"):
            print(f"{key:36s} {value:7.2f} ms/face ({1000 / value:7.1f} faces/s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


def embedder_rows(path: str, folder: str, faces: int) -> dict:
    """dlib's descriptor and our InsightFaceEmbedder, one face per call, on the same aligned face."""
    from skimage import data

    from dynamicid.faces import FaceAnalyzer
    from dynamicid.faces.backends.insightface_backend import InsightFaceEmbedder, OnnxModel

    analyzer = FaceAnalyzer()
    photo = data.astronaut()
    face = analyzer.analyze(photo, max_faces=1, embed=False)[0]
    rows = {"dlib_ms": per_face_ms(lambda: analyzer.embed(photo, face), faces)}
    arcface = InsightFaceEmbedder(folder)
    for threads in sorted({1, os.cpu_count()}):
        arcface.model = OnnxModel(path, threads=threads)
        rows[f"arcface_{threads}thread_ms"] = per_face_ms(
            lambda: arcface.embed(photo, face.landmarks68, "ibug68", face.box), faces
        )
    return rows


if __name__ == "__main__":
    main()
