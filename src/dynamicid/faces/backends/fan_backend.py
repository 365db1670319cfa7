"""FAN (Face Alignment Network) 68-point 2-D landmarks from a local TorchScript file.

Put face_alignment's 2D-FAN-4 TorchScript archive (e.g. 2DFAN4-cd938726ad.zip) in a folder and pass
it with --landmarks-model; any TorchScript module taking (B, 3, 256, 256) RGB in [0, 1] and giving
(B, 68, 64, 64) heatmaps (or a list whose last item is) works. Runs on the GPU Spark assigned to the
task, else the first GPU, else the CPU; all faces of an image go through in one batch.

Crop (face_alignment's convention): centre = box centre raised by 12% of the box height, side =
200 * scale with scale = (box width + box height) / 195, resized to 256 px. A heatmap's peak (with a
quarter-pixel step towards the larger neighbour) at cell (x, y) is crop point ((x + 0.5) * 4, (y + 0.5) * 4).
"""

from __future__ import annotations

import glob
import os
import warnings

import cv2
import numpy as np

from dynamicid.faces.alignment import apply_affine
from dynamicid.faces.backends.base import BackendError, Resources, model_file_hash
from dynamicid.faces.types import FaceBox

CROP = 256
HEATMAP = 64
EXPECTED = "a TorchScript 2D FAN, e.g. face_alignment's 2DFAN4-cd938726ad.zip"


def crop_matrix(box: FaceBox) -> np.ndarray:
    """2x3 affine from image pixels to the 256 px FAN crop."""
    cx = (box.x0 + box.x1) / 2
    cy = (box.y0 + box.y1) / 2 - 0.12 * box.height
    side = 200.0 * (box.width + box.height) / 195.0
    zoom = CROP / side
    return np.array([[zoom, 0.0, CROP / 2 - cx * zoom], [0.0, zoom, CROP / 2 - cy * zoom]])


def heatmap_peaks(heatmaps: np.ndarray) -> np.ndarray:
    """(B, K, H, W) -> (B, K, 2) peak positions in heatmap cells, refined a quarter cell towards the larger
    neighbour."""
    batch, points, height, width = heatmaps.shape
    flat = heatmaps.reshape(batch, points, -1).argmax(-1)
    ys, xs = np.divmod(flat, width)
    peaks = np.stack([xs, ys], axis=-1).astype(np.float64)
    for b in range(batch):
        for k in range(points):
            x, y, h = xs[b, k], ys[b, k], heatmaps[b, k]
            if 0 < x < width - 1:
                peaks[b, k, 0] += 0.25 * np.sign(h[y, x + 1] - h[y, x - 1])
            if 0 < y < height - 1:
                peaks[b, k, 1] += 0.25 * np.sign(h[y + 1, x] - h[y - 1, x])
    return peaks


def find_model(path: str | None) -> str:
    if path and os.path.isfile(path):
        return path
    if not path or not os.path.isdir(path):
        raise BackendError(f"FAN model not found: {path!r}; give landmarks_model a folder holding {EXPECTED}")
    files = sorted(f for ext in ("*.zip", "*.pt", "*.pth", "*.torchscript") for f in glob.glob(os.path.join(path, ext)))
    if not files:
        raise BackendError(f"{path} holds no FAN model: expected {EXPECTED}")
    return files[0]


class FanLandmarks:
    name = "fan"
    convention = "ibug68"

    def __init__(self, model_path: str | None = None, resources: Resources | None = None):
        import torch

        path = find_model(model_path)
        self.device = (resources or Resources()).torch_device()
        try:
            with warnings.catch_warnings():  # FAN ships as TorchScript, which torch now calls deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(path, map_location=self.device).eval()
        except Exception as err:
            raise BackendError(f"{path} is not a loadable TorchScript FAN model: {err}") from None
        self.model_id = f"fan:{os.path.basename(path)}:{model_file_hash(path)}"
        self._torch = torch

    def landmarks_batch(self, rgb: np.ndarray, boxes: list[FaceBox]) -> list[np.ndarray]:
        """68 points for each box, all faces in one forward pass."""
        if not boxes:
            return []
        torch = self._torch
        matrices = [crop_matrix(box) for box in boxes]
        crops = np.stack(
            [cv2.warpAffine(rgb, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderValue=0) for m in matrices]
        )
        batch = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
        with torch.no_grad():
            out = self.net(batch)
        heatmaps = (out[-1] if isinstance(out, (list, tuple)) else out).float().cpu().numpy()
        if heatmaps.shape[1:] != (68, HEATMAP, HEATMAP):
            raise BackendError(f"the FAN model gave heatmaps of shape {heatmaps.shape[1:]}, expected (68, 64, 64)")
        peaks = (heatmap_peaks(heatmaps) + 0.5) * (CROP / HEATMAP)
        return [apply_affine(cv2.invertAffineTransform(m), p).astype(np.float32) for m, p in zip(matrices, peaks)]

    def landmarks(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        return self.landmarks_batch(rgb, [box])[0]
