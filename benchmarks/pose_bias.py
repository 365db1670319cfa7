"""Head-pose bias before and after the mean-face model (issue 15 §2), against MediaPipe's 3-D face mesh.

The reference, `results-pose-mediapipe.json`, is written by `tools/pose_reference_mediapipe.py` in its
own environment. Both estimates run on the same dlib landmarks of the 16 photos of ../shared/faces, the
astronaut and their mirror images. Each method's pitch zero is its own median over the 16 identity photos
and their mirrors (portraits of people looking into the camera); pitch is compared after that, yaw as is.

    .venv/bin/python benchmarks/pose_bias.py ../shared/faces benchmarks/results-pose-bias.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dynamicid.faces import FaceAnalyzer, pose

# Before: the hand-made generic face (millimetres, nose tip at the origin) the fit used until issue 15,
# with the chin and the mouth corners among its points and no pitch calibration.
GENERIC_FACE_BEFORE = {
    30: (0.0, 0.0, 0.0),
    27: (0.0, -40.0, 22.0),
    8: (0.0, 64.0, 13.0),
    36: (-44.0, -33.0, 27.0),
    45: (44.0, -33.0, 27.0),
    39: (-14.0, -32.0, 23.0),
    42: (14.0, -32.0, 23.0),
    48: (-29.0, 29.0, 24.0),
    54: (29.0, 29.0, 24.0),
    31: (-13.0, 4.0, 15.0),
    35: (13.0, 4.0, 15.0),
}


def photos(folder: Path):
    from skimage import data

    for path in sorted((folder / "identities").glob("*/*")):
        yield f"{path.parent.name}/{path.name}", np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    yield "astronaut/astronaut.png", data.astronaut()


def estimates(folder: Path, reference: dict) -> list[dict]:
    analyzer = FaceAnalyzer()
    pose.POSE_POINTS["before"] = GENERIC_FACE_BEFORE  # the old model, under a name of its own
    rows = []
    for key, rgb in photos(folder):
        for suffix, image in (("", rgb), ("_mirror", np.ascontiguousarray(rgb[:, ::-1]))):
            face = analyzer.analyze(image, max_faces=1)[0]
            before = pose.estimate_pose(face.landmarks, "before")
            after = pose.estimate_pose(face.landmarks, "ibug68")
            mp = reference[key + suffix]
            rows.append(
                {
                    "photo": key + suffix,
                    "before": [before.pitch, before.yaw],
                    "after": [after.pitch, after.yaw],
                    "mediapipe": [mp["pitch"], mp["yaw"]],
                    "prompt": face.face_prompt,
                }
            )
    return rows


def errors(rows: list[dict], method: str) -> dict:
    portraits = [r for r in rows if not r["photo"].startswith("astronaut")]
    zero = float(np.median([r[method][0] for r in portraits]))
    mp_zero = float(np.median([r["mediapipe"][0] for r in portraits]))
    pitch = np.array([(r[method][0] - zero) - (r["mediapipe"][0] - mp_zero) for r in rows])
    yaw = np.array([r[method][1] - r["mediapipe"][1] for r in rows])
    slope = float(np.polyfit([r["mediapipe"][1] for r in rows], [r[method][1] for r in rows], 1)[0])
    astronaut = [r[method][0] for r in rows if r["photo"].startswith("astronaut")]
    return {
        "median_pitch_of_portraits": round(zero, 2),
        "pitch_mean_abs_error": round(float(np.abs(pitch).mean()), 2),
        "pitch_max_abs_error": round(float(np.abs(pitch).max()), 2),
        "yaw_mean_abs_error": round(float(np.abs(yaw).mean()), 2),
        "yaw_max_abs_error": round(float(np.abs(yaw).max()), 2),
        "yaw_scale_vs_mediapipe": round(slope, 2),
        "astronaut_pitch": [round(v, 1) for v in astronaut],
    }


def main(folder: str, target: str) -> None:
    reference = json.loads((Path(__file__).parent / "results-pose-mediapipe.json").read_text())
    rows = estimates(Path(folder), reference)
    result = {"before": errors(rows, "before"), "after": errors(rows, "after"), "photos": rows}
    Path(target).write_text(json.dumps(result, indent=1))
    for method in ("before", "after"):
        print(method, json.dumps(result[method]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
