"""DynamicIDPipeline: one or several persons from one photo each, a scene prompt, per-person face prompts.

A diffusers `DiffusionPipeline`: its parts are registered modules, so `.to()`, `save_pretrained()` /
`from_pretrained()` of a saved pipeline, `components`, `from_pipe()` and `enable_model_cpu_offload()` work.
Reference photos go through `dynamicid.faces` (the same analysis as prep and eval). Every input is
checked before the first denoising step. The denoising loop is the one of diffusers'
StableDiffusionPipeline (same noise, scheduler calls and guidance), so with `id_scale=0` and
untrained LoRA it reproduces that pipeline's image for the same seed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.outputs import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer, landmark_image
from dynamicid.faces.face_prompt import normalise
from dynamicid.generation.layout import to_saa
from dynamicid.generation.persons import EncodedPerson, load_rgb, target_map
from dynamicid.generation.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_ID_SCALE,
    DEFAULT_STEPS,
    MAX_OUTPUT_PIXELS,
    MAX_WORK,
    GenerationError,
    Person,
    RequestLimits,
    check_number,
    check_request,
    default_size,
)
from dynamicid.models.basemodel import clip_hidden_states, dropped_text, encode_text
from dynamicid.models.checkpoints import CheckpointError, DynamicIDWeights
from dynamicid.models.imr import landmark_map_to_tensor
from dynamicid.models.saa import SAASettings, install_processors, remove_processors
from dynamicid.responsible.consent import ConsentGate, ConsentOptions, photo_hash

logger = logging.getLogger(__name__)


@dataclass
class DynamicIDPipelineOutput(BaseOutput):
    """
    Args:
        images: the generated images, as PIL images, a numpy array (N, H, W, 3) or a torch tensor, by `output_type`.
        gate_maps: (N, h, w) SAA gates averaged over steps and layers, when `return_gate_maps` was set.
        persons: the encoded persons the images were made from (pass them back as `person_embeds`).
        metadata: every setting of the call, the boxes used and the measured source face prompts.
    """

    images: Any
    gate_maps: np.ndarray | None = None
    persons: list[EncodedPerson] | None = None
    metadata: dict[str, Any] | None = None


# Kept for code that imported the old name.


class DynamicIDPipeline(DiffusionPipeline):
    r"""
    Identity-preserving generation of one or several persons with DynamicID (SAA, IMR) on Stable Diffusion 1.5.

    Args:
        vae, text_encoder, tokenizer, unet, scheduler: a Stable Diffusion 1.5 pipeline's parts (any fine-tune).
        image_encoder: CLIP vision model whose penultimate hidden states feed the face encoder (ViT-H/14).
        feature_extractor: its `CLIPImageProcessor`.
        face_encoder: `FaceEncoder`, identity embedding + CLIP features -> ID tokens.
        saa: `DynamicIDAttention`, the SAA and LoRA processors; installed on `unet` here.
        imr, keypoint_encoder: `IMR` and `KeyPointEncoder`, for face editing; optional.
        face_analysis: the `FaceAnalysisConfig` fields of the face analysis reference photos go through; its
            embedder must be the one the face encoder was trained with.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->face_encoder->keypoint_encoder->imr->unet->vae"  # type: ignore[assignment]
    _optional_components = ["imr", "keypoint_encoder"]
    _exclude_from_cpu_offload = ["saa"]  # its processors live inside the UNet and move with it
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        image_encoder: Any,
        feature_extractor: Any,
        face_encoder: Any,
        saa: Any,
        imr: Any = None,
        keypoint_encoder: Any = None,
        face_analysis: dict[str, Any] | None = None,
    ):
        super().__init__()
        if face_encoder is None or saa is None:
            raise CheckpointError(
                "the DynamicID weights lack the face encoder or the SAA processors (SAA.bin / saa.safetensors)"
            )
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            face_encoder=face_encoder,
            saa=saa,
            imr=imr,
            keypoint_encoder=keypoint_encoder,
        )
        self.register_to_config(face_analysis=face_analysis)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._base_processors = install_processors(unet, saa)
        self._fusing = True  # calls fold the LoRA into the UNet at their scale; `unfuse_lora` turns it off
        self._face_analyzer: FaceAnalyzer | None = None
        # Checks every reference face against a consent registry and deny list (`use_consent`); None: no check.
        self.consent: ConsentGate | None = None
        self.model_version: str | None = None  # what the watermark's payload names (default: the model's path)
        self._interrupt = False
        encoder_width = face_encoder.config.clip_dim
        if image_encoder.config.hidden_size != encoder_width:
            raise CheckpointError(
                f"the face encoder takes CLIP features of width {encoder_width}, the image encoder "
                f"gives {image_encoder.config.hidden_size}"
            )
        if face_encoder.config.cross_attention_dim != unet.config.cross_attention_dim:
            raise CheckpointError("the face encoder's token width does not match the UNet's cross-attention width")

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Any = None,
        weights: Any = None,
        clip_image_encoder: Any = None,
        face_config: FaceAnalysisConfig | None = None,
        device: Any = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> Any:
        """A saved DynamicIDPipeline (a folder or repo with its model_index.json), or one built from parts:
        `pretrained_model_name_or_path` an SD1.5-layout base, `weights` ours or the authors', and
        `clip_image_encoder`. Each is a folder or a Hugging Face repo id; left out, the defaults of
        `dynamicid.hub.DEFAULTS`. `weights` alone may be a saved pipeline's folder (what `dynamicid run`
        publishes)."""
        from dynamicid.generation import loading

        if pretrained_model_name_or_path is None and clip_image_encoder is None and loading.is_saved_folder(weights):
            pretrained_model_name_or_path, weights = weights, None  # `--weights FOLDER` of a published model
        if weights is None and clip_image_encoder is None and loading.is_saved_pipeline(pretrained_model_name_or_path):
            pipe = super().from_pretrained(loading.local_pipeline(pretrained_model_name_or_path), **kwargs)
            pipe = pipe.to(device=device, dtype=dtype) if device or dtype else pipe
        else:
            pipe = loading.from_parts(
                cls, pretrained_model_name_or_path, weights, clip_image_encoder, face_config, device, dtype
            )
        from dynamicid.hub import DEFAULTS

        # What the watermark's payload names: the weights as given (a published folder, a repo id, a path).
        pipe.model_version = str(weights or pretrained_model_name_or_path or DEFAULTS["weights"].reference)
        return pipe

    @classmethod
    def from_pipe(
        cls,
        pipeline: Any,
        weights: Any = None,
        clip_image_encoder: Any = None,
        face_config: FaceAnalysisConfig | None = None,
        **kwargs: Any,
    ) -> Any:
        """DynamicID on an existing pipeline's parts (a `StableDiffusionPipeline` of any SD1.5 fine-tune): its
        vae, text encoder, tokenizer, UNet and scheduler are shared, not copied; our processors go on its UNet."""
        from dynamicid.generation import loading

        if isinstance(pipeline, cls) and weights is None:
            return super().from_pipe(pipeline, **kwargs)
        return loading.onto_pipe(cls, pipeline, weights, clip_image_encoder, face_config, **kwargs)

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> None:  # type: ignore[override]  # passes all on
        """Saves every part; the UNet is saved without our processors (they are saved as `saa`)."""
        self.saa.unfuse_lora(self.unet)  # the UNet is saved as it came; the next call fuses again
        remove_processors(self.unet, self._base_processors)
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            install_processors(self.unet, self.saa)

    # -- the LoRA folded into the UNet's weights for inference ---------------------------------------------
    def fuse_lora(self, lora_scale: float = 1.0) -> None:
        """Fold lora_scale x LoRA into the UNet's attention weights, so each attention layer runs one matrix
        product instead of two branches. Calls do this themselves at their `lora_scale` (refolding when it
        changes); a call at another scale stays exact. Not while the LoRA trains."""
        self._fusing = True
        self.saa.fuse_lora(self.unet, lora_scale)

    def unfuse_lora(self) -> None:
        """The UNet's attention weights back to what they were, bit for bit (before sharing the UNet with a
        plain pipeline, say); calls then run the LoRA as a branch until `fuse_lora` is called again."""
        self._fusing = False
        self.saa.unfuse_lora(self.unet)

    def _fuse_for(self, lora_scale: float) -> None:
        trainable = any(p.requires_grad for p in self.saa.parameters())
        if self._fusing and not trainable and self.saa.fused_scale != lora_scale:
            self.saa.fuse_lora(self.unet, lora_scale)

    # -- attention processors: SAA must stay installed ---------------------------------------------------
    def _refuse_processor_swap(self, what: str) -> None:
        raise GenerationError(
            f"{what} would replace SAA's attention processors on the UNet, and with them the identity and the "
            "LoRA (id_scale would then change nothing); DynamicIDPipeline does not support it. To save memory, "
            "use enable_vae_slicing(), enable_vae_tiling() or enable_model_cpu_offload()"
        )

    def enable_attention_slicing(self, slice_size: Any = "auto") -> None:
        self._refuse_processor_swap("enable_attention_slicing()")

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        self._refuse_processor_swap("enable_xformers_memory_efficient_attention()")

    # diffusers' StableDiffusionPipeline offered these; here they turn the VAE's own switches.
    def enable_vae_slicing(self) -> None:
        """Decode the images of a call one at a time (less memory for many images, the same pixels)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Decode large images in overlapping tiles (much less memory; tile seams are blended)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def check_processors(self) -> None:
        """Before a call: the UNet still runs SAA's processors (a direct `unet.set_attn_processor` replaces
        them); refuse to run without them instead of silently dropping the identity."""
        installed = list(self.unet.attn_processors.values())
        if len(installed) != len(self.saa.names) or any(a is not b for a, b in zip(installed, self.saa)):
            raise GenerationError(
                "the UNet's attention processors are no longer SAA's (replaced with unet.set_attn_processor?), so "
                "the identity and the LoRA would be dropped; load the pipeline again, or call "
                "pipe.reinstall_saa() to put SAA's processors back"
            )

    def reinstall_saa(self) -> None:
        """Put SAA's processors back on the UNet (after something replaced them)."""
        install_processors(self.unet, self.saa)

    @property
    def weights(self) -> DynamicIDWeights:
        return DynamicIDWeights(self.face_encoder, self.saa, self.imr, self.keypoint_encoder)

    @property
    def face_analyzer(self) -> FaceAnalyzer:
        """The face analysis of reference photos, built on first use from the `face_analysis` config."""
        if self._face_analyzer is None:
            self._face_analyzer = FaceAnalyzer(self.face_analysis_config)
        return self._face_analyzer

    @face_analyzer.setter
    def face_analyzer(self, analyzer: FaceAnalyzer) -> None:
        self._face_analyzer = analyzer
        self.register_to_config(face_analysis=asdict(analyzer.config))

    def use_consent(self, options: ConsentOptions) -> None:
        """Checks every reference photo against `options` (a `responsible.consent.ConsentOptions`): a face on
        the deny list is refused, and under `require_consent` a face with no registered, unexpired consent.
        The registry's photos are embedded now, by this pipeline's face analysis."""
        self.consent = ConsentGate.build(options, self.face_analyzer)

    @property
    def face_analysis_config(self) -> FaceAnalysisConfig:
        """The face analysis the weights go with, as saved in the pipeline's config (the default without one)."""
        return FaceAnalysisConfig(**(dict(self.config).get("face_analysis") or {}))

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # -- encoders ----------------------------------------------------------------------------------
    def encode_prompt(
        self,
        prompt: list[str],
        device: Any,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings (B * num_images_per_prompt, 77, D), and those of the negative prompt under guidance."""
        if prompt_embeds is None:
            prompt_embeds = encode_text(self.tokenizer, self.text_encoder, prompt, device)[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = (
                negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompt_embeds)
            )
            if len(negatives) != len(prompt_embeds):
                raise GenerationError(f"{len(negatives)} negative prompts for {len(prompt_embeds)} prompts")
            negative_prompt_embeds = encode_text(self.tokenizer, self.text_encoder, negatives, device)[0]
        dtype = self.unet.dtype
        prompt_embeds = prompt_embeds.to(device, dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device, dtype).repeat_interleave(
                num_images_per_prompt, dim=0
            )
        return prompt_embeds, negative_prompt_embeds

    def _prompt_cut(self, prompts: list[str]) -> str | list[str | None] | None:
        """What the text encoder could not read of each prompt (None: all of it), logged as a warning and kept
        in the metadata (the sidecar's `prompt_cut`)."""
        cut = [dropped_text(self.tokenizer, prompt) for prompt in prompts]
        for dropped in cut:
            if dropped:
                logger.warning(
                    "the prompt is longer than the text encoder's %d tokens; this end was not used: %r",
                    self.tokenizer.model_max_length,
                    dropped,
                )
        return cut[0] if len(cut) == 1 else cut

    def clip_features(self, rgb: np.ndarray | None) -> torch.Tensor:
        """CLIP penultimate hidden states of a photo; None gives those of an all-zero pixel tensor."""
        return clip_hidden_states(
            self.image_encoder, self.feature_extractor, [rgb], self._execution_device, self.image_encoder.dtype
        )

    def analyse_reference(self, person: Person, index: int) -> Any:
        who = person.name or f"person {index + 1}"  # as the user counts, from 1
        rgb = load_rgb(person.reference, f"reference photo of {who}")
        faces = self.face_analyzer.analyze(rgb, max_faces=1)
        if not faces:
            where = f" ({person.reference})" if isinstance(person.reference, str) else ""
            raise GenerationError(
                f"reference photo of {who}{where}: no face was detected; use a photo with one clear face"
            )
        if self.consent is not None:
            self.consent.check(faces[0].embedding, f"the reference photo of {who}", photo_hash(person.reference))
        embedder = self.face_analyzer.embedder
        assert embedder is not None  # the pipeline's analyzer is built with its embedder
        if embedder.dim != self.face_encoder.config.id_dim:
            raise CheckpointError(
                f"the face encoder takes {self.face_encoder.config.id_dim}-d identity embeddings but the embedder "
                f"{embedder.name!r} gives {embedder.dim}-d; use the embedder the weights were trained with (512-d "
                "ArcFace for the authors' weights)"
            )
        return rgb, faces[0]

    def encode_person(self, person: Person, rgb: np.ndarray, face: Any) -> EncodedPerson:
        """The person's ID tokens: face encoder on (embedding, CLIP features), then IMR when a face prompt or
        target landmarks ask for an edit."""
        device, dtype = self._execution_device, self.face_encoder.dtype
        embedding = torch.as_tensor(face.embedding, dtype=dtype, device=device)[None]
        tokens = self.face_encoder(embedding, self.clip_features(rgb).to(dtype))[0]
        wants_edit = bool(person.face_prompt) or person.target_landmarks is not None
        if not wants_edit:
            return EncodedPerson(tokens, tokens, face.face_prompt, False, face.box.as_list(), face.embedding)
        if self.imr is None or self.keypoint_encoder is None:
            raise CheckpointError("face editing needs IMR and the KeyPointEncoder (IMR.bin, key_point_encoder.bin)")
        source_map = landmark_image.render_map96(face.aligned_landmarks, face.aligned.shape[0])
        target = target_map(person.target_landmarks) if person.target_landmarks is not None else source_map
        maps = torch.stack([landmark_map_to_tensor(source_map), landmark_map_to_tensor(target)])
        features = self.keypoint_encoder(maps.to(device, self.keypoint_encoder.dtype))
        _, pooled = encode_text(
            self.tokenizer,
            self.text_encoder,
            [face.face_prompt, normalise(person.face_prompt) if person.face_prompt else face.face_prompt],
            device,
        )
        edited = self.imr.edit(tokens, features[:1], pooled[:1], features[1:], pooled[1:])[0]
        return EncodedPerson(edited, tokens, face.face_prompt, True, face.box.as_list(), face.embedding)

    @torch.no_grad()
    def encode_persons(self, persons: list[Person]) -> list[EncodedPerson]:
        """Every person's ID tokens; all reference photos are analysed (and their errors raised) first."""
        analysed = [self.analyse_reference(person, index) for index, person in enumerate(persons)]
        return [self.encode_person(person, rgb, face) for person, (rgb, face) in zip(persons, analysed)]

    # -- the call's steps ----------------------------------------------------------------------------
    def check_inputs(
        self,
        prompt: Any,
        persons: Any,
        person_embeds: Any,
        height: Any,
        width: Any,
        steps: Any,
        guidance: Any,
        images: Any,
        max_output_pixels: Any,
        callback_on_step_end_tensor_inputs: Any,
        numbers: dict[str, Any] | None = None,
        max_work: Any = None,
    ) -> Any:
        """The request (`check_request`) plus this model's size rule and the callback's tensor names; `numbers`
        (id_scale, infer_scale, infer_end, seed) are checked against the ranges the command line and the API
        use. Returns the prompts as a list and the persons' boxes."""
        for key, value in (numbers or {}).items():
            check_number(key, value, key)
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise GenerationError(f"prompt must be a string or a list of strings, not {type(prompt).__name__}")
        if person_embeds is not None and persons is not None and len(persons) != len(person_embeds):
            raise GenerationError(f"{len(person_embeds)} person_embeds for {len(persons)} persons")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise GenerationError(
                f"callback_on_step_end_tensor_inputs may name {self._callback_tensor_inputs}, not {sorted(unknown)}"
            )
        multiple = self.vae_scale_factor * 4
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, int) and value > 0 and value % multiple:
                raise GenerationError(f"{name} {value} must be a multiple of {multiple} for this model")
        if persons is None:
            persons = [Person(None) for _ in person_embeds or []]
        boxes = check_request(
            persons,
            height,
            width,
            steps,
            guidance,
            images,
            RequestLimits(
                MAX_OUTPUT_PIXELS if max_output_pixels is None else max_output_pixels,
                MAX_WORK if max_work is None else max_work,
            ),
        )
        return ([prompt] if isinstance(prompt, str) else list(prompt or [])), persons, boxes

    def prepare_latents(
        self, batch: int, height: int, width: int, dtype: Any, device: Any, generator: Any, latents: Any = None
    ) -> Any:
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise GenerationError(f"latents have shape {tuple(latents.shape)}, this call needs {shape}")
        return latents.to(device, dtype) * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        """`eta` and `generator` for schedulers whose step takes them (DDIM does; Euler and DPM-Solver differ)."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {key: value for key, value in (("eta", eta), ("generator", generator)) if key in accepted}

    def identity_context(self, encoded: list[EncodedPerson], prompt_embeds: Any, negative_prompt_embeds: Any) -> Any:
        """[text, every person's ID tokens] per image, unconditional first under guidance."""
        batch = len(prompt_embeds)
        # person_embeds may come from anywhere (a cache, another device): they follow the prompt's device and dtype
        id_tokens = torch.cat([e.tokens for e in encoded])[None].to(prompt_embeds.device, prompt_embeds.dtype)
        cond = torch.cat([prompt_embeds, id_tokens.expand(batch, -1, -1)], dim=1)
        if negative_prompt_embeds is None:
            return cond
        blank = self.face_encoder.unconditional(self.clip_features(None).to(self.face_encoder.dtype))
        uncond_tokens = blank.repeat(1, len(encoded), 1).to(prompt_embeds.device, prompt_embeds.dtype)
        return torch.cat([torch.cat([negative_prompt_embeds, uncond_tokens.expand(batch, -1, -1)], dim=1), cond])

    # -- the call ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        persons: list[Person] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        person_embeds: list[EncodedPerson] | None = None,
        id_scale: float = DEFAULT_ID_SCALE,
        lora_scale: float = 1.0,
        infer_scale: float | None = None,
        infer_end: int | None = None,
        gate: bool = True,
        eta: float = 0.0,
        return_gate_maps: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_output_pixels: int | None = None,
        max_work: int | None = None,
        watermark: bool = True,
        check_identities: bool = False,
        retries: int = 0,
    ) -> Any:
        r"""
        Generate images of the given persons.

        Args:
            prompt: the scene, a string or one string per image batch. Leave out when giving `prompt_embeds`.
            persons: one `Person` each: a reference photo, and optionally a face prompt ("in a happy
                expression, in side view, turned left"), target landmarks and a box [x0, y0, x1, y1] as
                fractions of the image. With `person_embeds`, only their boxes are read (and may be left out).
            negative_prompt: what to avoid, a string or one per prompt.
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance; 1 or below turns it off.
            height, width: the image size in pixels (multiples of 32 for SD1.5); by default 512 for one person,
                768 for two, 1024 for more (`default_size`, the command line's rule too).
            num_images_per_prompt: images per prompt.
            generator: a `torch.Generator` for the noise; `seed` makes one when it is not given.
            seed: a convenience for `generator`.
            latents: starting noise of shape (images, 4, height / 8, width / 8), instead of drawing it.
            prompt_embeds, negative_prompt_embeds: text encoder outputs (B, 77, D) instead of prompts.
            person_embeds: the output of `encode_persons`, reused instead of analysing the photos again.
            id_scale: strength of the identity path in every SAA layer.
            lora_scale: strength of the LoRA on every attention layer.
            infer_scale, infer_end: the authors' layout strength and the number of steps it lasts (default 2
                and 12 with boxes or several persons, else 0).
            gate: SAA's gate; off gives IP-Adapter-style injection with no routing.
            eta: DDIM's eta, for schedulers that take it.
            return_gate_maps: also return the gates averaged over steps and layers.
            output_type: "pil", "np", "pt" or "latent".
            return_dict: a `DynamicIDPipelineOutput`, or the tuple (images, gate_maps, persons).
            callback_on_step_end: called as `f(pipe, step, timestep, tensors)` after every step, with the tensors
                named in `callback_on_step_end_tensor_inputs`; it returns a dict of replaced tensors. Setting
                `pipe._interrupt = True` in it stops the denoising.
            max_output_pixels: the largest height x width x images one call may make (`MAX_OUTPUT_PIXELS`).
            max_work: the largest height x width x images x steps one call may take (`MAX_WORK`).
            watermark: mark every image with the invisible watermark (`responsible.watermark`), whose payload
                names the model version and the image's request id (both in `metadata["watermark"]`). False
                leaves them unmarked, and the metadata says so.
            check_identities: analyse each output's faces and classify it (`faces.identity_check`: each person
                ok, missing, swapped, duplicate or blended), in `metadata["identity_check"]`.
            retries: with `check_identities`, try up to this many more seeds (seed + 1, seed + 2, ...) until every
                image passes; every try, its outcomes and the seed kept are recorded. The kept try is the first
                that passes, else the one with the most persons ok.

        Returns:
            `DynamicIDPipelineOutput` (or a tuple with `return_dict=False`).
        """
        count_persons = len(persons) if persons is not None else len(person_embeds or [])
        height, width = default_size(count_persons, height, width)
        self.check_processors()
        prompts, persons, boxes = self.check_inputs(
            prompt if prompt_embeds is None else ["" for _ in prompt_embeds],
            persons,
            person_embeds,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            num_images_per_prompt,
            max_output_pixels,
            callback_on_step_end_tensor_inputs,
            {"id_scale": id_scale, "infer_scale": infer_scale, "infer_end": infer_end, "seed": seed},
            max_work,
        )
        prompt_embeds_given = prompt_embeds
        device = self._execution_device
        if generator is None and seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        encoded = person_embeds if person_embeds is not None else self.encode_persons(persons)
        guided = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompts, device, num_images_per_prompt, guided, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        count = len(prompt_embeds)
        if check_identities and output_type == "latent":
            raise GenerationError("check_identities needs images: use output_type pil, np or pt, not latent")
        tries = max(1, 1 + int(retries)) if check_identities else 1
        if tries > 1 and seed is None:  # the seeds tried must be known to be recorded and repeated
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            generator = torch.Generator(device=device).manual_seed(seed)
        self._fuse_for(lora_scale)
        attempts: list[dict[str, Any]] = []
        for attempt in range(tries):
            if attempt:
                assert seed is not None  # drawn above when retries are asked for
                generator, latents = torch.Generator(device=device).manual_seed(seed + attempt), None
            drawn = self.prepare_latents(count, height, width, prompt_embeds.dtype, device, generator, latents)
            settings = self.prepare_settings(
                len(encoded), boxes, drawn, id_scale, lora_scale, gate, infer_scale, infer_end
            )
            drawn, gate_sum = self._denoise(
                drawn,
                settings,
                encoded,
                prompt_embeds,
                negative_prompt_embeds,
                guidance_scale,
                num_inference_steps,
                generator,
                eta,
                return_gate_maps,
                callback_on_step_end,
                callback_on_step_end_tensor_inputs or [],
            )
            made = self._decode(drawn, output_type, generator)
            record = {"seed": None if seed is None else seed + attempt}
            if check_identities:
                record |= self.check_images(made, output_type, encoded, boxes)
            attempts.append(record | {"images": made, "gate_sum": gate_sum})
            if not check_identities or record["passed"] or self._interrupt:
                break
        kept = _kept_try(attempts)
        images, gate_sum = kept.pop("images"), kept.pop("gate_sum")
        gate_maps = (gate_sum / num_inference_steps).numpy() if gate_sum is not None else None
        self.maybe_free_model_hooks()
        metadata = self._metadata(
            prompts,
            negative_prompt,
            num_inference_steps,
            guidance_scale,
            height,
            width,
            seed,
            settings,
            boxes,
            persons,
            encoded,
        )
        metadata["prompt_cut"] = self._prompt_cut(prompts) if prompt_embeds_given is None else None
        if check_identities:
            metadata["seed"] = kept["seed"]
            recorded = [{k: v for k, v in record.items() if k not in ("images", "gate_sum")} for record in attempts]
            metadata["identity_check"] = {"passed": kept["passed"], "kept_seed": kept["seed"], "tries": recorded}
        images, metadata["watermark"] = self.watermark_images(images, output_type, watermark, metadata)
        if not return_dict:
            return images, gate_maps, encoded
        return DynamicIDPipelineOutput(images=images, gate_maps=gate_maps, persons=encoded, metadata=metadata)

    def prepare_settings(
        self,
        num_persons: int,
        boxes: list[tuple[float, float, float, float]] | None,
        latents: torch.Tensor,
        id_scale: float,
        lora_scale: float,
        gate: bool,
        infer_scale: float | None,
        infer_end: int | None,
    ) -> SAASettings:
        """SAA's settings for one call. With boxes (given, or placed for several persons) the layout boost
        defaults to the authors' infer_scale 2 for the first 12 steps; without, to none."""
        laid_out = boxes is not None
        return SAASettings(
            num_persons=num_persons,
            id_scale=id_scale,
            lora_scale=lora_scale,
            gate=gate,
            boxes=torch.tensor(to_saa(boxes), dtype=torch.float64, device=latents.device) if boxes else None,
            infer_scale=(2.0 if laid_out else 0.0) if infer_scale is None else infer_scale,
            infer_end=(12 if laid_out else 0) if infer_end is None else infer_end,
            latent_size=(int(latents.shape[-2]), int(latents.shape[-1])),
        )

    def _denoise(
        self,
        latents: Any,
        settings: Any,
        encoded: Any,
        prompt_embeds: Any,
        negative_prompt_embeds: Any,
        guidance_scale: Any,
        steps: Any,
        generator: Any,
        eta: Any,
        return_gate_maps: Any,
        callback: Any,
        callback_inputs: Any,
    ) -> Any:
        guided = negative_prompt_embeds is not None
        context = self.identity_context(encoded, prompt_embeds, negative_prompt_embeds)
        self.scheduler.set_timesteps(steps, device=latents.device)
        extra = self.prepare_extra_step_kwargs(generator, eta)
        count = len(latents)
        gate_sum = torch.zeros(count, *latents.shape[-2:]) if return_gate_maps else None
        self._interrupt = False
        with self.progress_bar(total=steps) as bar:
            for step, timestep in enumerate(self.scheduler.timesteps):
                if self._interrupt:
                    break
                settings.step = torch.tensor(step)
                settings.gate_maps = [] if return_gate_maps else None
                model_input = self.scheduler.scale_model_input(
                    torch.cat([latents] * 2) if guided else latents, timestep
                )
                noise = self.unet(
                    model_input,
                    timestep,
                    encoder_hidden_states=context,
                    cross_attention_kwargs={"dynamicid": settings},
                    return_dict=False,
                )[0]
                if guided:
                    noise_uncond, noise_text = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                latents = self.scheduler.step(noise, timestep, latents, **extra, return_dict=False)[0]
                if gate_sum is not None:
                    gate_sum += _mean_gate(settings.gate_maps, count, tuple(latents.shape[-2:]))
                if callback is not None:
                    named = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    replaced = callback(self, step, timestep, {name: named[name] for name in callback_inputs}) or {}
                    latents = replaced.get("latents", latents)
                    if "prompt_embeds" in replaced or "negative_prompt_embeds" in replaced:
                        prompt_embeds = replaced.get("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = replaced.get("negative_prompt_embeds", negative_prompt_embeds)
                        context = self.identity_context(encoded, prompt_embeds, negative_prompt_embeds)
                bar.update()
        return latents, gate_sum

    def check_images(self, images: Any, output_type: str, encoded: list[EncodedPerson], boxes: Any) -> dict[str, Any]:
        """Each image's faces, analysed as the references were, classified against the persons
        (`faces.identity_check`). Returns {"passed": every image passed, "outcomes": one per image}."""
        from dynamicid.faces.identity_check import check_faces, check_thresholds

        references = [person.embedding for person in encoded if person.embedding is not None]
        if len(references) != len(encoded):
            raise GenerationError("check_identities needs the persons' embeddings: encode them with this version")
        thresholds = check_thresholds(self.face_analyzer.config.embedder)
        names = [f"person {index + 1}" for index in range(len(encoded))]
        person_boxes = list(boxes) if boxes else [None] * len(encoded)
        outcomes = []
        for rgb in _as_uint8_images(images, output_type):
            faces = self.face_analyzer.analyze(rgb)
            checked = check_faces(faces, (rgb.shape[1], rgb.shape[0]), np.stack(references), person_boxes, thresholds)
            outcomes.append(
                {"outcome": checked.outcome, "passed": checked.passed, "persons": checked.as_records(names)}
            )
        return {"passed": all(item["passed"] for item in outcomes), "outcomes": outcomes}

    def watermark_images(
        self, images: Any, output_type: str, watermark: bool, metadata: dict[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """The images marked, and the record of it. Each image's request id comes from the call's settings and
        its index, so the same call makes the same image, and the id finds the image's sidecar."""
        if not watermark:
            return images, {"on": False}
        if output_type == "latent":
            logger.warning("latents are not images: they are not watermarked; decode them and mark the images")
            return images, {"on": False, "why": "latent output"}
        from dynamicid.responsible.watermark import mark_images

        version = self.model_version or str(dict(self.config).get("_name_or_path") or "unknown")
        key = json.dumps({k: metadata.get(k) for k in ("prompt", "seed", "height", "width", "steps")}, default=str)
        count = len(images)
        request_ids = [hashlib.sha256(f"{key}|{index}".encode()).hexdigest()[:16] for index in range(count)]
        marked = mark_images(images, output_type, version, request_ids)
        return marked, {"on": True, "model_version": version, "request_ids": request_ids}

    def _decode(self, latents: Any, output_type: str, generator: Any) -> Any:
        if output_type == "latent":
            return latents
        image = self.vae.decode(
            latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False, generator=generator
        )[0]
        return self.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * len(image))

    def _embedder_id(self) -> str | None:
        """The embedder behind the persons: the analyzer's model once it is built, else the configured name (a
        call with person_embeds never loads face analysis just to write its sidecar)."""
        if self._face_analyzer is not None and self._face_analyzer.embedder is not None:
            return str(self._face_analyzer.embedder.model_id)
        return self.face_analysis_config.embedder

    def _metadata(
        self,
        prompts: Any,
        negative_prompt: Any,
        steps: Any,
        guidance: Any,
        height: Any,
        width: Any,
        seed: Any,
        settings: Any,
        boxes: Any,
        persons: Any,
        encoded: Any,
    ) -> dict[str, Any]:
        return {
            "prompt": prompts[0] if len(prompts) == 1 else prompts,
            "negative_prompt": negative_prompt,
            "steps": steps,
            "guidance_scale": guidance,
            "height": height,
            "width": width,
            "seed": seed,
            "id_scale": settings.id_scale,
            "lora_scale": settings.lora_scale,
            "infer_scale": settings.infer_scale,
            "infer_end": settings.infer_end,
            "gate": settings.gate,
            "boxes": [list(b) for b in boxes] if boxes else None,
            "boxes_automatic": bool(boxes) and all(p.box is None for p in persons),
            "source_face_prompts": [e.source_face_prompt for e in encoded],
            "edited": [e.edited for e in encoded],
            "embedder": self._embedder_id(),
            "face_analysis": asdict(self.face_analysis_config),  # eval analyses the image the same way
        }


def _mean_gate(maps: list[dict[str, Any]], count: int, size: tuple[int, int]) -> torch.Tensor:
    """The conditional half's gates of one step, each layer resized to the latent grid, averaged."""
    resized = [F.interpolate(m["gate"][-count:, None], size=size, mode="nearest")[:, 0] for m in maps]
    return torch.stack(resized).mean(0)


def _kept_try(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The try to return: the first that passed, else the one with the most persons ok (the first of equals)."""
    if "passed" not in attempts[0]:
        return dict(attempts[0])
    for record in attempts:
        if record["passed"]:
            return dict(record)

    scores = [sum(p["outcome"] == "ok" for image in r["outcomes"] for p in image["persons"]) for r in attempts]
    return dict(attempts[scores.index(max(scores))])


def _as_uint8_images(images: Any, output_type: str) -> list[np.ndarray]:
    """A decoded batch as (H, W, 3) uint8 RGB arrays."""
    if output_type == "pil":
        return [np.asarray(image.convert("RGB")) for image in images]
    array = images.permute(0, 2, 3, 1).float().cpu().numpy() if output_type == "pt" else np.asarray(images)
    return list(np.clip(np.rint(array * 255), 0, 255).astype(np.uint8))
