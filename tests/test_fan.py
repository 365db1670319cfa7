"""FAN landmarks from a local TorchScript file: a tiny scripted model whose heatmaps peak where we say."""

import numpy as np
import pytest
import torch
from conftest import load_rgb

from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer
from dynamicid.faces.alignment import apply_affine
from dynamicid.faces.backends import BackendError
from dynamicid.faces.backends.fan_backend import CROP, HEATMAP, FanLandmarks, crop_matrix, heatmap_peaks
from dynamicid.faces.types import FaceBox


class FixedFan(torch.nn.Module):
    """(B, 3, 256, 256) -> (B, 68, 64, 64) heatmaps holding the given maps, whatever the input."""

    def __init__(self, heatmaps: torch.Tensor):
        super().__init__()
        self.register_buffer("heatmaps", heatmaps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heatmaps.unsqueeze(0).expand(x.shape[0], -1, -1, -1) + 0.0 * x.mean()


def bumps(cells: np.ndarray) -> torch.Tensor:
    """A bilinear bump per point at fractional heatmap cells."""
    maps = torch.zeros(len(cells), HEATMAP, HEATMAP)
    for k, (x, y) in enumerate(cells):
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, weight in (
            (0, 0, (1 - fx) * (1 - fy)),
            (1, 0, fx * (1 - fy)),
            (0, 1, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            if 0 <= x0 + dx < HEATMAP and 0 <= y0 + dy < HEATMAP:
                maps[k, y0 + dy, x0 + dx] = float(weight)
    return maps


def save_fan(folder, cells) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "2DFAN4-tiny.zip"
    torch.jit.script(FixedFan(bumps(cells))).save(str(path))
    return str(folder)


def cells_for(points, box):
    """Where these image points fall on the heatmap grid of this box's crop."""
    return apply_affine(crop_matrix(box), points) / (CROP / HEATMAP) - 0.5


def test_peaks_are_refined_towards_the_larger_neighbour():
    maps = np.zeros((1, 1, 8, 8))
    maps[0, 0, 3, 4], maps[0, 0, 3, 5], maps[0, 0, 2, 4] = 1.0, 0.6, 0.2  # larger neighbours: right, and above
    np.testing.assert_allclose(heatmap_peaks(maps)[0, 0], [4.25, 2.75])


def test_points_map_back_through_each_face_crop_in_one_batch(tmp_path):
    cells = np.tile([[20.0, 30.0]], (68, 1))
    fan = FanLandmarks(save_fan(tmp_path / "fan", cells))
    boxes = [FaceBox(100, 100, 300, 300), FaceBox(500, 50, 600, 150)]
    image = np.zeros((400, 700, 3), np.uint8)
    both = fan.landmarks_batch(image, boxes)
    for box, points in zip(boxes, both):
        expected = apply_affine(np.linalg.inv(np.vstack([crop_matrix(box), [0, 0, 1]]))[:2], [[(20.5) * 4, (30.5) * 4]])
        np.testing.assert_allclose(points[0], expected[0], atol=1e-3)
    assert np.abs(both[0][0] - both[1][0]).max() > 50  # each face through its own crop
    assert fan.model_id.startswith("fan:2DFAN4-tiny.zip:")


def test_fan_on_a_real_photo_reproduces_the_68_points_and_face_prompt(shared_faces, tmp_path):
    rgb = load_rgb(shared_faces / "identities/obama/4.jpg")
    dlib_face = FaceAnalyzer(with_embedder=False).analyze(rgb, max_faces=1, embed=False)[0]
    folder = save_fan(tmp_path / "fan", cells_for(dlib_face.landmarks, dlib_face.box))
    analyzer = FaceAnalyzer(FaceAnalysisConfig(landmarks="fan", landmarks_model=folder), with_embedder=False)
    face = analyzer.analyze(rgb, max_faces=1, embed=False)[0]
    assert face.landmark_convention == "ibug68"
    assert np.abs(face.landmarks - dlib_face.landmarks).max() < 4.0  # a quarter of a 4-px cell, in a 0.6x crop
    assert face.face_prompt == dlib_face.face_prompt
    assert analyzer.backend_ids["landmarks"].startswith("fan:")


def test_missing_or_broken_fan_models_are_named(tmp_path):
    with pytest.raises(BackendError, match="FAN model not found"):
        FanLandmarks(str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="holds no FAN model: expected a TorchScript 2D FAN"):
        FanLandmarks(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "2DFAN4.zip").write_bytes(b"not a model")
    with pytest.raises(BackendError, match="not a loadable TorchScript FAN model"):
        FanLandmarks(str(tmp_path / "bad"))
