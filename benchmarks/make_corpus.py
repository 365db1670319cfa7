"""Build a seed-scale face corpus from a few real photos: crop, scale, recolour and re-encode.

The seed's dataset is 7,000 photos of about 1.45 MB each (10 GB). Each output here is a large JPEG
(about 3000 px on the long side, film grain added so it compresses like a camera photo) made from
one source photo, cropped around the face so the face stays in frame.

    python benchmarks/make_corpus.py OUT --images 7000 [--sources ../shared/faces/identities]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

LONG_SIDE = 3000


def source_photos(folder: str | None) -> list[str]:
    paths = []
    if folder and os.path.isdir(folder):
        for root, _, files in os.walk(folder):
            paths += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return sorted(paths)


def _load(path: str | None) -> Image.Image:
    if path is None:
        from dynamicid.prep.sample import astronaut

        return astronaut()
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def variant(source: Image.Image, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    width, height = source.size
    keep = rng.uniform(0.82, 1.0)  # crop, keeping most of the frame so the face stays in
    crop_w, crop_h = int(width * keep), int(height * keep)
    left = int(rng.uniform(0, width - crop_w + 1))
    top = int(rng.uniform(0, height - crop_h + 1))
    image = source.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    scale = LONG_SIDE * rng.uniform(0.9, 1.1) / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
    pixels = np.asarray(image, dtype=np.int16)
    grain = rng.normal(0, 5.0, size=pixels.shape[:2] + (1,)).astype(np.int16)
    pixels = np.clip(pixels + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(rng.integers(88, 94)))
    return buffer.getvalue()


_SOURCES: list = []


def _init(paths: list[str]) -> None:
    global _SOURCES
    _SOURCES = [_load(p) for p in paths] if paths else [_load(None)]


def _make(args: tuple[int, str]) -> int:
    index, out = args
    source_index = index % len(_SOURCES)
    path = os.path.join(out, f"person{source_index:02d}", f"img{index:06d}.jpg")
    if os.path.exists(path):
        return os.path.getsize(path)
    data = variant(_SOURCES[source_index], seed=index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "wb") as handle:
        handle.write(data)
    os.replace(path + ".part", path)
    return len(data)


def build(out: str, images: int, sources: str | None, workers: int) -> dict:
    paths = source_photos(sources)
    started = time.perf_counter()
    with Pool(workers, initializer=_init, initargs=(paths,)) as pool:
        sizes = pool.map(_make, [(i, out) for i in range(images)], chunksize=8)
    return {
        "images": images,
        "sources": len(paths) or 1,
        "total_gb": sum(sizes) / 1e9,
        "mean_mb": sum(sizes) / len(sizes) / 1e6,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=7000)
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--sources",
        default=os.path.join(here, "..", "..", "shared", "faces", "identities"),
        help="folder of real photos (default ../shared/faces/identities; the astronaut if absent)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    stats = build(args.out, args.images, args.sources, args.workers)
    print(
        f"corpus: {stats['images']} images from {stats['sources']} photos, {stats['total_gb']:.2f} GB, "
        f"{stats['mean_mb']:.2f} MB each, built in {stats['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
