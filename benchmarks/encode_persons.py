"""What encoding a person costs against the denoising it feeds (issue 16), in one process.

Per person, the pipeline analyses the reference photo (detection, landmarks, embedding: the default
dlib backend, on the CPU), runs the CLIP image encoder, then the face encoder, and, when a face
prompt asks for an edit, the KeyPointEncoder, two text-encoder passes and IMR. Models have random
weights at their real sizes (CLIP ViT-H/14, SD1.5's text encoder and UNet, the method's face encoder
and IMR); speed does not depend on the weights' values. The denoising row is 50 SAA steps for two
persons with boxes at 512x512, CFG batch 2, as `gpu_generation.py` times it.

    python benchmarks/encode_persons.py               # GPU fp16 where there is one, else CPU fp32
    python benchmarks/encode_persons.py --tiny        # tiny models: checks the script runs
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch
from benchmarks_common import build_unet, sync, write_json  # same folder
from gpu_generation import denoise_fn

from dynamicid.models import IMR, FaceEncoder, KeyPointEncoder
from dynamicid.models.basemodel import clip_hidden_states
from dynamicid.models.imr import keypoint_base_for
from dynamicid.models.saa import DynamicIDAttention, install_processors


def timed(fn, repeats: int, device) -> float:
    """Median milliseconds of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def build_encoders(tiny: bool, device, dtype):
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    if tiny:
        vision = CLIPVisionConfig(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        )
        text = CLIPTextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=1000
        )
    else:  # CLIP ViT-H/14 (IP-Adapter's image encoder) and SD1.5's text encoder
        vision = CLIPVisionConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=1024,
            hidden_act="gelu",
        )
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    image_encoder = CLIPVisionModelWithProjection(vision).to(device, dtype).eval()
    size = vision.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    text_encoder = CLIPTextModel(text).to(device, dtype).eval()
    width = text.hidden_size
    face_encoder = FaceEncoder.for_width(128, vision.hidden_size, width).to(device, dtype).eval()
    imr = IMR.for_width(width, width).to(device, dtype).eval()
    keypoints = KeyPointEncoder(out_dim=width, base=keypoint_base_for(width)).to(device, dtype).eval()
    return image_encoder, processor, text_encoder, face_encoder, imr, keypoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    from skimage import data

    photo = data.astronaut()
    rows: dict[str, float] = {}
    if importlib.util.find_spec("dlib") is not None:  # the GPU machine has no dlib: analysis is a CPU cost there
        from dynamicid.faces import FaceAnalyzer

        analyzer = FaceAnalyzer()
        rows["face_analysis_cpu_ms"] = timed(
            lambda: analyzer.analyze(photo, max_faces=1), args.repeats, torch.device("cpu")
        )
    image_encoder, processor, text_encoder, face_encoder, imr, keypoints = build_encoders(args.tiny, device, dtype)
    embedding = torch.randn(1, 128, device=device, dtype=dtype)
    tokens_ids = torch.randint(0, text_encoder.config.vocab_size, (2, 77), device=device)
    maps = torch.rand(2, 1, 96, 96, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        rows["clip_image_ms"] = timed(
            lambda: clip_hidden_states(image_encoder, processor, [photo], device, dtype), args.repeats, device
        )
        features = clip_hidden_states(image_encoder, processor, [photo], device, dtype)
        rows["face_encoder_ms"] = timed(lambda: face_encoder(embedding, features), args.repeats, device)
        tokens = face_encoder(embedding, features)[0]

        def edit():
            motion = keypoints(maps)
            pooled = text_encoder(tokens_ids).pooler_output
            return imr.edit(tokens, motion[:1], pooled[:1], motion[1:], pooled[1:])

        rows["face_edit_ms"] = timed(edit, args.repeats, device)
        unet = build_unet(args.tiny, device, dtype)
        install_processors(unet, DynamicIDAttention.for_unet(unet, rank=4 if args.tiny else 128))
        side = 16 if args.tiny else 64
        latents = torch.randn(1, 4, side, side, device=device, dtype=dtype)
        text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
        run = denoise_fn(unet, "saa-2", args.steps, latents, text, device)
        forward = lambda *a, **k: unet(*a, **k, return_dict=False)[0]  # noqa: E731
        rows["denoise_saa2_ms"] = timed(lambda: run(forward), max(1, args.repeats // 5), device)
    per_person = sum(v for k, v in rows.items() if k != "denoise_saa2_ms")
    rows["person_total_ms"] = per_person
    rows["two_persons_vs_denoise"] = 2 * per_person / rows["denoise_saa2_ms"]
    print(f"device: {name}, {dtype}")
    for key, value in rows.items():
        print(f"{key:24s} {value:10.2f}")
    write_json(args.json, name, [rows])


if __name__ == "__main__":
    main()
