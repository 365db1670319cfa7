"""DynamicIDPipeline: one or several persons from one photo each, a scene prompt, per-person face prompts.

Reference photos go through `dynamicid.faces` (the same analysis as prep and eval). Every input is
checked before the first denoising step. The denoising loop is the one of diffusers'
StableDiffusionPipeline (same noise, scheduler calls and guidance), so with `id_scale=0` and
untrained LoRA it reproduces that pipeline's image for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dynamicid.basemodel import clip_hidden_states, encode_text, load_base_model, load_clip_image_encoder
from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer, landmark_image
from dynamicid.imagefile import Rejected, load_image
from dynamicid.models.checkpoints import CheckpointError, DynamicIDWeights, load_weights
from dynamicid.models.imr import landmark_map_to_tensor
from dynamicid.models.saa import SAASettings, install_processors, processor_layout
from dynamicid.pipeline.layout import to_saa
from dynamicid.pipeline.request import MAX_OUTPUT_PIXELS, GenerationError, Person, check_request


@dataclass
class EncodedPerson:
    tokens: torch.Tensor  # (k, D), after any IMR edit
    source_tokens: torch.Tensor  # (k, D), straight from the face encoder
    source_face_prompt: str
    edited: bool
    face_box: list[float]


@dataclass
class DynamicIDOutput:
    images: list
    gate_maps: np.ndarray | None = None  # (images, h, w), mean over steps and SAA layers
    metadata: dict = field(default_factory=dict)


class DynamicIDPipeline:
    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, image_encoder, image_processor,
                 weights: DynamicIDWeights, face_analyzer: FaceAnalyzer | None = None, device="cpu", dtype=torch.float32,
                 prepare_modules: bool = True):
        if weights.face_encoder is None or weights.attention is None:
            raise CheckpointError("the DynamicID weights lack the face encoder or the SAA processors (SAA.bin / saa.safetensors)")
        self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler = vae, text_encoder, tokenizer, unet, scheduler
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self.weights = weights
        self.face_analyzer = face_analyzer or FaceAnalyzer(FaceAnalysisConfig())
        self.device, self.dtype = torch.device(device), dtype
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        from diffusers.image_processor import VaeImageProcessor

        self.output_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        if prepare_modules:  # training passes False: its modules stay where they are, trainable
            for module in self._modules():
                module.to(self.device).eval().requires_grad_(False)
                if dtype != torch.float32:  # diffusers warns on any dtype cast, so cast only when asked
                    module.to(dtype)
            install_processors(unet, weights.attention)
        self._check_dimensions()

    def _modules(self):
        parts = [self.vae, self.text_encoder, self.unet, self.image_encoder, self.weights.face_encoder, self.weights.attention]
        return [m for m in parts + [self.weights.imr, self.weights.keypoint_encoder] if m is not None]

    def _check_dimensions(self) -> None:
        encoder = self.weights.face_encoder.config
        clip_width = self.image_encoder.config.hidden_size
        if clip_width != encoder.clip_dim:
            raise CheckpointError(f"the face encoder takes CLIP features of width {encoder.clip_dim}, the image encoder gives {clip_width}")
        if self.face_analyzer.embedder.dim != encoder.id_dim:
            raise CheckpointError(
                f"the face encoder takes {encoder.id_dim}-d identity embeddings but the embedder "
                f"{self.face_analyzer.embedder.name!r} gives {self.face_analyzer.embedder.dim}-d; use the embedder the "
                "weights were trained with (512-d ArcFace for the authors' weights)"
            )
        if encoder.cross_attention_dim != self.unet.config.cross_attention_dim:
            raise CheckpointError("the face encoder's token width does not match the UNet's cross-attention width")

    @classmethod
    def from_pretrained(cls, base_model: str, weights: str, clip_image_encoder: str,
                        face_config: FaceAnalysisConfig | None = None, device: str = "cpu", dtype=torch.float32):
        """base_model: SD1.5 (or a fine-tune) in diffusers layout; weights: ours or the authors';
        clip_image_encoder: a CLIP vision model folder (CLIPVisionModelWithProjection)."""
        from diffusers import DDIMScheduler

        base = load_base_model(base_model)
        image_encoder, image_processor = load_clip_image_encoder(clip_image_encoder)
        return cls(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=base.unet,
            scheduler=DDIMScheduler.from_config(base.scheduler_config),
            image_encoder=image_encoder,
            image_processor=image_processor,
            weights=load_weights(weights, processor_layout(base.unet)),
            face_analyzer=FaceAnalyzer(face_config or FaceAnalysisConfig()),
            device=device,
            dtype=dtype,
        )

    # -- encoders ----------------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states (B, 77, D), pooled (B, D)) from the SD text encoder."""
        return encode_text(self.tokenizer, self.text_encoder, texts, self.device)

    def clip_features(self, rgb: np.ndarray | None) -> torch.Tensor:
        """CLIP penultimate hidden states of a photo; None gives those of an all-zero pixel tensor."""
        return clip_hidden_states(self.image_encoder, self.image_processor, [rgb], self.device, self.dtype)

    def _load_rgb(self, source, what: str) -> np.ndarray:
        if isinstance(source, np.ndarray):
            return source
        try:
            return load_image(str(source)).rgb
        except Rejected as rejection:
            raise GenerationError(f"{what} {source}: {rejection.reason}: {rejection.message}") from None

    def _target_map(self, source) -> np.ndarray:
        if isinstance(source, np.ndarray):
            array = source
        else:
            from PIL import Image

            try:
                array = np.asarray(Image.open(source).convert("L"))
            except OSError as err:
                raise GenerationError(f"target landmarks {source}: {err}") from None
        if array.shape == (landmark_image.LANDMARK_PNG_SIZE[1], landmark_image.LANDMARK_PNG_SIZE[0]):
            array = landmark_image.split_landmark_png(array)[1]
        if array.shape != (landmark_image.MAP_SIZE, landmark_image.MAP_SIZE):
            raise GenerationError(f"target landmarks must be a 96x96 map or prep's 608x512 NAME.png, got shape {array.shape}")
        return array

    def analyse_reference(self, person: Person, index: int):
        rgb = self._load_rgb(person.reference, f"reference photo of person {index}")
        faces = self.face_analyzer.analyze(rgb, max_faces=1)
        if not faces:
            where = person.reference if isinstance(person.reference, str) else f"person {index}"
            raise GenerationError(f"reference photo {where}: no face was detected; use a photo with one clear face")
        return rgb, faces[0]

    def encode_person(self, person: Person, rgb: np.ndarray, face) -> EncodedPerson:
        w = self.weights
        embedding = torch.as_tensor(face.embedding, dtype=self.dtype, device=self.device)[None]
        tokens = w.face_encoder(embedding, self.clip_features(rgb))[0]
        edited = tokens
        wants_edit = bool(person.face_prompt) or person.target_landmarks is not None
        if wants_edit:
            if w.imr is None or w.keypoint_encoder is None:
                raise CheckpointError("face editing needs IMR and the KeyPointEncoder (IMR.bin, key_point_encoder.bin)")
            source_map = landmark_image.render_map96(face.aligned_landmarks, face.aligned.shape[0])
            target_map = self._target_map(person.target_landmarks) if person.target_landmarks is not None else source_map
            maps = torch.stack([landmark_map_to_tensor(source_map), landmark_map_to_tensor(target_map)]).to(self.device, self.dtype)
            features = w.keypoint_encoder(maps)
            _, pooled = self.encode_text([face.face_prompt, person.face_prompt or face.face_prompt])
            edited = w.imr.edit(tokens, features[:1], pooled[:1], features[1:], pooled[1:])[0]
        return EncodedPerson(edited, tokens, face.face_prompt, wants_edit, face.box.as_list())

    # -- generation --------------------------------------------------------------------------------
    def check_request(self, persons: list[Person], height: int, width: int, steps: int, guidance: float,
                      images: int = 1, max_output_pixels: int | None = None):
        """`check_request` (the module function) plus this model's own size rule. Returns the boxes."""
        multiple = self.vae_scale_factor * 4
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, int) and value > 0 and value % multiple:
                raise GenerationError(f"{name} {value} must be a multiple of {multiple} for this model")
        return check_request(persons, height, width, steps, guidance, images,
                             MAX_OUTPUT_PIXELS if max_output_pixels is None else max_output_pixels)

    @torch.no_grad()
    def __call__(self, prompt: str, persons: list[Person], negative_prompt: str | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 5.0, height: int = 512, width: int = 512,
                 num_images_per_prompt: int = 1, seed: int | None = None, id_scale: float = 1.0, lora_scale: float = 1.0,
                 infer_scale: float | None = None, infer_end: int | None = None, gate: bool = True,
                 return_gate_maps: bool = False, output_type: str = "pil",
                 max_output_pixels: int | None = None) -> DynamicIDOutput:
        boxes = self.check_request(persons, height, width, num_inference_steps, guidance_scale, num_images_per_prompt,
                                   max_output_pixels)
        analysed = [self.analyse_reference(p, i) for i, p in enumerate(persons)]  # every face error before any work
        layout_default = boxes is not None
        infer_scale = (2.0 if layout_default else 0.0) if infer_scale is None else infer_scale
        infer_end = (12 if layout_default else 0) if infer_end is None else infer_end

        encoded = [self.encode_person(p, rgb, face) for p, (rgb, face) in zip(persons, analysed)]
        count = num_images_per_prompt
        text, _ = self.encode_text([prompt])
        negative, _ = self.encode_text([negative_prompt or ""])
        id_tokens = torch.cat([e.tokens for e in encoded])[None]  # (1, N*k, D)
        uncond_tokens = self.weights.face_encoder.unconditional(self.clip_features(None)).repeat(1, len(persons), 1)
        cond = torch.cat([text, id_tokens], dim=1).repeat(count, 1, 1)
        uncond = torch.cat([negative, uncond_tokens], dim=1).repeat(count, 1, 1)
        do_guidance = guidance_scale > 1.0
        context = torch.cat([uncond, cond]) if do_guidance else cond

        from diffusers.utils.torch_utils import randn_tensor

        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        latent_h, latent_w = height // self.vae_scale_factor, width // self.vae_scale_factor
        shape = (count, self.unet.config.in_channels, latent_h, latent_w)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)

        gate_sum = torch.zeros(count, latent_h, latent_w) if return_gate_maps else None
        # One settings object for the whole call: its box masks are built once, on the device.
        settings = SAASettings(
            num_persons=len(persons), id_scale=id_scale, lora_scale=lora_scale, gate=gate,
            boxes=torch.tensor(to_saa(boxes), dtype=torch.float64, device=self.device) if boxes else None,
            infer_scale=infer_scale, infer_end=infer_end, latent_size=(latent_h, latent_w),
        )
        for step, timestep in enumerate(self.scheduler.timesteps):
            settings.step = torch.tensor(step)
            settings.gate_maps = [] if return_gate_maps else None
            model_input = torch.cat([latents] * 2) if do_guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, timestep)
            noise = self.unet(model_input, timestep, encoder_hidden_states=context,
                              cross_attention_kwargs={"dynamicid": settings}, return_dict=False)[0]
            if do_guidance:
                noise_uncond, noise_text = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise, timestep, latents, eta=0.0, generator=generator, return_dict=False)[0]
            if return_gate_maps:
                gate_sum += _mean_gate(settings.gate_maps, count, (latent_h, latent_w))

        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        images = self.output_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * count)
        gate_maps = (gate_sum / num_inference_steps).numpy() if return_gate_maps else None
        metadata = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "height": height,
            "width": width,
            "seed": seed,
            "id_scale": id_scale,
            "lora_scale": lora_scale,
            "infer_scale": infer_scale,
            "infer_end": infer_end,
            "gate": gate,
            "boxes": [list(b) for b in boxes] if boxes else None,
            "boxes_automatic": bool(boxes) and all(p.box is None for p in persons),
            "source_face_prompts": [e.source_face_prompt for e in encoded],
            "edited": [e.edited for e in encoded],
            "embedder": self.face_analyzer.embedder.model_id,
        }
        self.last_encoded = encoded
        return DynamicIDOutput(images, gate_maps, metadata)


def _mean_gate(maps: list[dict], count: int, size: tuple[int, int]) -> torch.Tensor:
    """The conditional half's gates of one step, each layer resized to the latent grid, averaged."""
    resized = [F.interpolate(m["gate"][-count:, None], size=size, mode="nearest")[:, 0] for m in maps]
    return torch.stack(resized).mean(0)
