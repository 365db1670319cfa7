"""An invisible watermark on every generated image (issue 37 §1), with RivaGAN's encoder and decoder, the ONNX
models that ship in invisible-watermark's MIT wheel, run here through ONNX Runtime.

RivaGAN alone carries 32 bits and loses them when an image is halved and then re-encoded as JPEG (measured in
benchmarks/RESULTS.md). So the mark is embedded at half the image's size: the encoder's change to the halved
image is scaled up and added to the full image, and lives in the lower frequencies that halving and JPEG keep.
The reader decodes the image at half its size and at its own size (for a copy halved already).

The 32 bits are a code word: 12 payload bits (4 of the model's version, 8 of the request) and 20 check bits
(20 bits of the SHA-256 of the payload, so code words differ in about half their bits on average). The reader does not
trust single bits: it scores every one of the 4,096 code words against the decoder's 32 outputs and takes the
best, which corrects bits a JPEG flipped. Each output counts through tanh(output / 2): a sure bit counts
about 1, an unsure one little. That keeps the decoder's confidence in the score, and confidence is what
separates marked images (outputs about 13 in size on average) from unmarked ones (about 2), which RivaGAN
also decodes to a pattern with some bias. An image is reported as marked when the best score reaches
`MARKED_SCORE`. An earlier reader normalised the outputs by their total size. That threw the confidence
away, and 3.55% of unmarked images were reported marked; now 0 of 2,000 are (RESULTS.md). The payload is a
hint for finding the sidecar (which holds the full request id), not a unique key.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynamicid.errors import SetupError
from dynamicid.options import option

logger = logging.getLogger(__name__)

BITS = 32
MODEL_BITS, REQUEST_BITS, CHECK_BITS = 4, 8, 20
PAYLOAD_BITS = MODEL_BITS + REQUEST_BITS
STRENGTH = 1.6  # the encoder's change, scaled: PSNR about 38.8 dB on 512² photos (the target is 38 or more)
SOFTNESS = 2.0  # a decoder output of +-4 counts as 0.96 of a sure bit
# The best code word's score (the mean over 32 bits of agreement x tanh(|output| / 2)) at or above which an
# image is reported marked. Set in the gap between unmarked images (highest 0.675 of 300) and marked ones
# after every attack (lowest 0.814, one synthetic colour wheel aside), then checked on 2,000 other unmarked
# images, none of which reached it (highest 0.691): benchmarks/RESULTS.md.
MARKED_SCORE = 0.75
_MULTIPLE = 8  # the encoder's frames are kept to sides that are multiples of this
INSTALL_HINT = "pip install --no-deps invisible-watermark==0.2.0 onnxruntime (make venv does)"


def watermark_option():
    """`generate`'s and `serve`'s switch, written once."""
    return option(
        True,
        "leave the images without the invisible watermark (it is on by default; each sidecar then records that "
        "it is off)",
    )


def image_record(call_record: dict[str, Any] | None, index: int) -> dict[str, Any]:
    """One image's watermark record for its sidecar, from the call's (`metadata["watermark"]`)."""
    if not call_record or not call_record.get("on"):
        return dict(call_record or {"on": False})
    request_id = call_record["request_ids"][index]
    return {
        "on": True,
        "model_version": call_record["model_version"],
        "request_id": request_id,
        "payload": f"{code_word(call_record['model_version'], request_id):08x}",
    }


@dataclass(frozen=True)
class WatermarkReading:
    marked: bool
    score: float  # the best code word's agreement with the decoder's outputs, -1 to 1 (1: every bit agrees, sure)
    payload: int | None  # the 12 payload bits of that code word, when marked
    model_id: int | None
    request_id: int | None
    word: str  # that code word, 8 hex digits (the sidecar's "payload")
    bits: str  # the decoder's own 32 bits before correction, as 0/1 characters


def check_bits(payload: int) -> int:
    """The code word's 20 check bits: the first 20 bits of the SHA-256 of the payload."""
    return short_id(f"dynamicid watermark {payload}", CHECK_BITS)


def short_id(text: str, bits: int) -> int:
    """`bits` bits of the SHA-256 of `text`: how a model version or a request id fits the payload."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") >> (32 - bits)


def code_word(model_version: str, request_id: str) -> int:
    payload = (short_id(model_version, MODEL_BITS) << REQUEST_BITS) | short_id(request_id, REQUEST_BITS)
    return (payload << CHECK_BITS) | check_bits(payload)


def payload_bits(model_version: str, request_id: str) -> np.ndarray:
    """The 32 bits written: model (4), request (8), then the 20 check bits of those 12."""
    word = code_word(model_version, request_id)
    return np.array([(word >> (BITS - 1 - i)) & 1 for i in range(BITS)], np.float32)


_codebook: np.ndarray | None = None


def codebook() -> np.ndarray:
    """Every code word as +-1 per bit, (4096, 32) float32, made once."""
    global _codebook
    if _codebook is None:
        payloads = np.arange(2**PAYLOAD_BITS, dtype=np.int64)
        checks = np.array([check_bits(int(p)) for p in payloads], np.int64)
        words = (payloads << CHECK_BITS) | checks
        _codebook = (((words[:, None] >> (BITS - 1 - np.arange(BITS))) & 1) * 2 - 1).astype(np.float32)
    return _codebook


class Watermarker:
    """RivaGAN's ONNX encoder and decoder, loaded once (two sessions, `threads` each); thread-safe to call."""

    def __init__(self, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SetupError(f"the watermark needs ONNX Runtime: {INSTALL_HINT}") from None
        folder = _model_folder()
        options = ort.SessionOptions()
        # One thread that does not spin between runs: marking sits beside generation (and beside other work
        # on a shared machine), where ONNX Runtime's default of every core, spinning, takes CPU from them.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(os.path.join(folder, "rivagan_encoder.onnx"), options, providers=providers)
        self.decoder = ort.InferenceSession(os.path.join(folder, "rivagan_decoder.onnx"), options, providers=providers)

    def mark(self, rgb: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """The image (H, W, 3 uint8) with `bits` embedded at half its size."""
        height, width = rgb.shape[:2]
        work = _resized(rgb.astype(np.float32), _working_size(width // 2, height // 2))
        change = self._encode(work, bits) - work
        full = rgb.astype(np.float32) + STRENGTH * _resized(change, (width, height))
        return np.clip(np.rint(full), 0, 255).astype(np.uint8)

    def read(self, rgb: np.ndarray) -> WatermarkReading:
        """The better of two readings: at half the image's size (as marked), and at its own size."""
        height, width = rgb.shape[:2]
        image = rgb.astype(np.float32)
        sizes = {_working_size(width // 2, height // 2), _working_size(width, height)}
        return max((_reading(self._decode(_resized(image, size))) for size in sizes), key=lambda r: r.score)

    def _encode(self, rgb: np.ndarray, bits: np.ndarray) -> np.ndarray:
        frame = (rgb / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None].astype(np.float32)
        out = self.encoder.run(None, {"frame": frame, "data": bits[None].astype(np.float32)})[0]
        return (np.clip(out[0, :, 0].transpose(1, 2, 0), -1.0, 1.0) + 1.0) * 127.5

    def _decode(self, rgb: np.ndarray) -> np.ndarray:
        frame = (rgb / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None].astype(np.float32)
        return np.asarray(self.decoder.run(None, {"frame": frame})[0][0], np.float64)


def _reading(logits: np.ndarray) -> WatermarkReading:
    """The code word that agrees best with the decoder's soft outputs, and whether it agrees enough."""
    scores = codebook() @ np.tanh(logits / SOFTNESS).astype(np.float32) / BITS
    payload = int(scores.argmax())
    score = float(scores[payload])
    marked = score >= MARKED_SCORE
    word = (payload << CHECK_BITS) | check_bits(payload)
    return WatermarkReading(
        marked,
        score,
        payload if marked else None,
        payload >> REQUEST_BITS if marked else None,
        payload & ((1 << REQUEST_BITS) - 1) if marked else None,
        f"{word:08x}",
        "".join("1" if value > 0 else "0" for value in logits),
    )


def _model_folder() -> str:
    import importlib.util

    spec = importlib.util.find_spec("imwatermark")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "rivagan_encoder.onnx")):
            return folder
    raise SetupError(f"the watermark's RivaGAN models (invisible-watermark's wheel) are not installed: {INSTALL_HINT}")


def _working_size(width: int, height: int) -> tuple[int, int]:
    return max(_MULTIPLE, width // _MULTIPLE * _MULTIPLE), max(_MULTIPLE, height // _MULTIPLE * _MULTIPLE)


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float (H, W, 3) image at `size` (width, height), bicubic, channel by channel in float."""
    from PIL import Image

    if (image.shape[1], image.shape[0]) == size:
        return image
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize(size, Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


_shared: dict[int, Watermarker] = {}


def shared_watermarker(threads: int = 1) -> Watermarker:
    """One Watermarker per process and thread count (its ONNX sessions take a second to load): one thread
    for marking beside generation; `verify`, which does nothing else, reads with every core (0)."""
    if threads not in _shared:
        _shared[threads] = Watermarker(threads)
    return _shared[threads]


def mark_images(images: Any, output_type: str, model_version: str, request_ids: list[str]) -> Any:
    """A pipeline's images ("pil": PIL images; "np": (N, H, W, 3) floats in [0, 1]; "pt": (N, 3, H, W)
    floats in [0, 1]), each marked with the payload of (model_version, its request id), in the same form."""
    from PIL import Image

    marker = shared_watermarker()

    def marked(rgb: np.ndarray, request_id: str) -> np.ndarray:
        return marker.mark(rgb, payload_bits(model_version, request_id))

    if output_type == "pil":
        return [Image.fromarray(marked(np.asarray(i.convert("RGB")), r)) for i, r in zip(images, request_ids)]
    array = images.permute(0, 2, 3, 1).cpu().numpy() if output_type == "pt" else np.asarray(images)
    as_bytes = np.clip(np.rint(array * 255), 0, 255).astype(np.uint8)
    done = np.stack([marked(rgb, r) for rgb, r in zip(as_bytes, request_ids)]).astype(np.float32) / 255
    if output_type == "pt":
        import torch

        return torch.from_numpy(done).permute(0, 3, 1, 2).to(images.device, images.dtype)
    return done.astype(array.dtype)
