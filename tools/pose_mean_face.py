"""Prints `MEAN_FACE_IBUG68` for `dynamicid.faces.pose`: the rigid points of the 68-point mean 3-D face
that InsightFace's Python package ships (data/objects/meanshape_68.pkl, MIT licence).

    .venv/bin/pip install --no-deps insightface==2.1 && .venv/bin/python tools/pose_mean_face.py

Nose tip at the origin, z turned to point away from the camera (our pose frame), scaled by 100, and
made symmetric about the midline."""

from __future__ import annotations

import os
import pickle

import numpy as np

RIGID = (27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45)  # nose bridge and tip, nostrils' base, eye corners
MIRROR = {31: 35, 35: 31, 36: 45, 45: 36, 39: 42, 42: 39}  # the other side's point; the rest lie on the midline


def main() -> None:
    import insightface

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "objects", "meanshape_68.pkl")
    with open(path, "rb") as handle:
        shape = np.asarray(pickle.load(handle), dtype=np.float64)  # (68, 3): x right, y down, z to the camera
    ours = (shape - shape[30]) * np.array([1.0, 1.0, -1.0]) * 100.0
    # Made exactly symmetric (each point averaged with its mirror), so a mirrored face reads the opposite yaw.
    mirrored = {i: ours[MIRROR.get(i, i)] * np.array([-1.0, 1.0, 1.0]) for i in RIGID}
    ours = {i: (ours[i] + mirrored[i]) / 2 for i in RIGID}
    for index in RIGID:
        x, y, z = (round(float(v), 1) + 0.0 for v in ours[index])
        print(f"    {index}: ({x}, {y}, {z}),")


if __name__ == "__main__":
    main()
