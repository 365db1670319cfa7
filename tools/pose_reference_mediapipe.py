"""Reference head pose from MediaPipe's 3-D face mesh, for measuring our pose estimate's bias (issue 15).

Runs in its own environment (mediapipe 0.10.14 pins numpy and protobuf versions that clash with ours):

    python3 -m venv /tmp/mpenv && /tmp/mpenv/bin/pip install mediapipe==0.10.14 pillow
    /tmp/mpenv/bin/python tools/pose_reference_mediapipe.py ../shared/faces/identities benchmarks/pose-reference.json

For every photo and its mirror image, FaceMesh gives 468 points with depth (x and z in units of the
image width, y of its height). The head's axes follow from them:
  right   the mean of the vectors across four symmetric pairs (outer and inner eye corners, mouth
          corners, the cheeks at the ears), from the subject's right side (the image's left) to the left;
  up      from the chin (152) to the top of the forehead (10), made orthogonal to `right`;
  forward right x up, the direction the face looks, towards the camera for a frontal face.
Pitch and yaw are read from `forward` in our convention (pitch > 0 facing up, yaw > 0 turned towards
the image's right), as `dynamicid.faces.pose.rotation_to_pose` reads them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SYMMETRIC_PAIRS = ((33, 263), (133, 362), (61, 291), (234, 454))  # subject's right, subject's left
CHIN, FOREHEAD = 152, 10


def head_pose(points: np.ndarray) -> tuple[float, float]:
    """(pitch, yaw) in degrees from (468, 3) points in pixels, y down and z away from the camera."""
    right = np.mean([points[b] - points[a] for a, b in SYMMETRIC_PAIRS], axis=0)
    right /= np.linalg.norm(right)
    up = points[FOREHEAD] - points[CHIN]
    up -= right * (up @ right)
    up /= np.linalg.norm(up)
    forward = np.cross(right, up)  # x right, y down, z away: right x up points towards the camera (-z)
    yaw = math.degrees(math.atan2(forward[0], -forward[2]))
    pitch = math.degrees(math.atan2(-forward[1], math.hypot(forward[0], forward[2])))
    return pitch, yaw


def main(folder: str, target: str) -> None:
    import mediapipe as mp

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)
    results = {}
    for path in sorted(Path(folder).glob("*/*")):
        rgb = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        for suffix, image in (("", rgb), ("_mirror", np.ascontiguousarray(rgb[:, ::-1]))):
            found = mesh.process(image).multi_face_landmarks
            key = f"{path.parent.name}/{path.name}{suffix}"
            if not found:
                results[key] = None
                continue
            height, width = image.shape[:2]
            points = np.array([[p.x * width, p.y * height, p.z * width] for p in found[0].landmark])
            pitch, yaw = head_pose(points)
            results[key] = {"pitch": round(pitch, 2), "yaw": round(yaw, 2)}
    Path(target).write_text(json.dumps(results, indent=1))
    print(f"{sum(v is not None for v in results.values())} of {len(results)} faces measured -> {target}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
