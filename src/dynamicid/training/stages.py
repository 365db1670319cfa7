"""Stage 1 (anchoring) and stage 2 (reconfiguration), method spec section 5."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dynamicid.atomic import write_atomic
from dynamicid.errors import ConfigError, first_line
from dynamicid.models import IMR, FaceEncoder, KeyPointEncoder
from dynamicid.models.basemodel import clip_hidden_states, encode_text, load_base_model, load_clip_image_encoder
from dynamicid.models.checkpoints import DynamicIDWeights, load_weights, save_authors, save_ours
from dynamicid.models.imr import ConvUnit, keypoint_base_for, landmark_map_to_tensor
from dynamicid.models.saa import DynamicIDAttention, SAASettings, install_processors, processor_layout
from dynamicid.training import data as td
from dynamicid.training.config import AnchorConfig, ReconfigConfig
from dynamicid.training.trainer import Trainer, weights_digest

logger = logging.getLogger(__name__)


class Frozen:
    """The frozen models of both stages, loaded once, in eval mode, without gradients."""

    def __init__(self, config, device, dtype):
        base = load_base_model(config.base_model)
        self.unet, self.vae, self.text_encoder, self.tokenizer = base.unet, base.vae, base.text_encoder, base.tokenizer
        self.image_encoder, self.image_processor = load_clip_image_encoder(config.clip_image_encoder)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler_config)
        self.scheduler_config = base.scheduler_config
        self.device, self.dtype = device, dtype
        for module in (self.unet, self.vae, self.text_encoder, self.image_encoder):
            module.requires_grad_(False).eval().to(device)
            if dtype != torch.float32:
                module.to(dtype)
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def text(self, texts: list[str]):
        with torch.no_grad():
            hidden, pooled = encode_text(self.tokenizer, self.text_encoder, texts, self.device)
        return hidden, pooled

    def clip(self, images: list):
        with torch.no_grad():
            return clip_hidden_states(self.image_encoder, self.image_processor, images, self.device, self.dtype)

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            encoded = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist.mode()
        return encoded * self.vae.config.scaling_factor

    def noisy(self, latents: torch.Tensor, generators: list[torch.Generator]):
        """Noise and a timestep for each row, row i from generators[i] (one stream per place in the global
        batch, so a face's noise does not depend on the process that draws it)."""
        steps = self.noise_scheduler.config.num_train_timesteps
        draws = [
            (torch.randn(latents.shape[1:], generator=g), torch.randint(0, steps, (1,), generator=g))
            for g in generators
        ]
        noise = torch.stack([n for n, _ in draws]).to(latents.device, latents.dtype)
        timesteps = torch.cat([t for _, t in draws]).to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return noisy, timesteps, target


def _hold(module: nn.Module, unet: nn.Module) -> None:
    """Keep the frozen UNet on `module` without registering it: it is then neither trained, cast,
    broadcast between processes nor saved in checkpoints, while forward can still run it."""
    object.__setattr__(module, "unet", unet)


class AnchorModel(nn.Module):
    """Stage 1's trainable parts and the frozen UNet they steer, behind one forward that gives the UNet's
    prediction. This module is what accelerate prepares (DistributedDataParallel on several processes), so
    the loop's forward goes through the wrapper and the gradients are averaged across processes."""

    def __init__(
        self, face_encoder: FaceEncoder, attention: DynamicIDAttention, unet: nn.Module, settings: SAASettings
    ):
        super().__init__()
        self.face_encoder = face_encoder
        self.attention = attention
        self.settings = settings
        _hold(self, unet)

    def forward(self, noisy, timesteps, text, embeddings, clip) -> torch.Tensor:
        tokens = self.face_encoder(embeddings.float(), clip.float()).to(text.dtype)
        context = torch.cat([text, tokens], dim=1)
        return self.unet(noisy, timesteps, context, cross_attention_kwargs={"dynamicid": self.settings}).sample


class ReconfigModel(nn.Module):
    """Stage 2's trainable parts and the frozen UNet, behind one forward over the step's global batch of
    identities. This process's items (those with `source_tokens`) give the edited ID tokens and, when they
    carry noisy latents (L_LDC), the UNet's prediction with them; the other processes' items only pass their
    landmark maps through the KeyPointEncoder without gradients, so its BatchNorm running statistics follow
    the global batch in order on every process, as on one process."""

    def __init__(self, imr: IMR, keypoint_encoder: KeyPointEncoder, unet: nn.Module):
        super().__init__()
        self.imr = imr
        self.keypoint_encoder = keypoint_encoder
        self.settings = SAASettings(num_persons=1)
        _hold(self, unet)

    def constant_parameters(self) -> list[nn.Parameter]:
        """The KeyPointEncoder's convolution biases that feed BatchNorm: it subtracts their batch mean, so
        their gradient is zero in exact arithmetic and AdamW would turn round-off into full-size steps."""
        return [
            unit.conv_block[0].bias
            for unit in self.keypoint_encoder.modules()
            if isinstance(unit, ConvUnit) and unit.conv_block[0].bias is not None
        ]

    def forward(self, items: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        results = []
        for item in items:
            if "source_tokens" not in item:
                with torch.no_grad():
                    self.keypoint_encoder(item["maps"])
                continue
            features = self.keypoint_encoder(item["maps"])
            prompt = item["prompts"]
            edited = self.imr.edit(item["source_tokens"], features[:1], prompt[:1], features[1:], prompt[1:])
            prediction = None
            if "noisy" in item:
                context = torch.cat([item["text"], edited.to(item["text"].dtype)], 1)
                kwargs = {"dynamicid": self.settings}
                prediction = self.unet(item["noisy"], item["timesteps"], context, cross_attention_kwargs=kwargs).sample
            results.append((edited, prediction))
        return results


def _write_final(weights: DynamicIDWeights, config, trainer: Trainer, extra: dict) -> dict:
    """The main process writes the final weights and train_config.json; the others wait for it."""
    paths = {}
    extra = extra | {
        "processes": trainer.accelerator.num_processes,
        "processes_cpu_seconds": trainer.processes_cpu_seconds,
        "processes_faces": trainer.processes_faces,
        "weights_digests": trainer.weights_digests,
    }
    if trainer.is_main:
        paths["weights"] = os.path.join(config.output, "weights")
        save_ours(weights, paths["weights"])
        paths["weights_authors"] = os.path.join(config.output, "weights-authors")
        save_authors(weights, paths["weights_authors"])
        settings = json.dumps(config.to_dict() | extra, indent=2).encode()
        write_atomic(os.path.join(config.output, "train_config.json"), settings)
    trainer.accelerator.wait_for_everyone()
    return paths


def _sampler_callback(config, frozen: Frozen, weights_of, reference: str, face_analysis: dict | None):
    """Sample images while training, through the generation pipeline itself."""

    def sample(step: int) -> None:
        from diffusers import DDIMScheduler

        from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer
        from dynamicid.faces.record import config_of
        from dynamicid.generation import DynamicIDPipeline, Person

        weights = weights_of()
        pipe = DynamicIDPipeline(
            frozen.vae,
            frozen.text_encoder,
            frozen.tokenizer,
            frozen.unet,
            DDIMScheduler.from_config(frozen.scheduler_config),
            frozen.image_encoder,
            frozen.image_processor,
            weights.face_encoder,
            weights.attention,
            weights.imr,
            weights.keypoint_encoder,
        )
        # The reference is analysed as the training data was, so its embedding matches the face encoder.
        faces = config_of(face_analysis, f"{config.data} face analysis") if face_analysis else FaceAnalysisConfig()
        pipe.face_analyzer = FaceAnalyzer(faces)
        pipe.unfuse_lora()  # the UNet is training's: its weights stay as they are
        pipe.set_progress_bar_config(disable=True)
        try:
            result = pipe(
                "a portrait photo of a person",
                [Person(reference)],
                num_inference_steps=config.sample_steps,
                height=config.resolution,
                width=config.resolution,
                seed=config.seed,
            )
        except Exception as err:  # a sample must never stop training
            logger.warning("sample at step %d skipped: %s", step, err)
            return
        folder = os.path.join(config.output, "samples")
        os.makedirs(folder, exist_ok=True)
        result.images[0].save(os.path.join(folder, f"step-{step:07d}.png"))

    return sample


def _anchor_modules(config: AnchorConfig, frozen: Frozen, id_dim: int) -> tuple[FaceEncoder, DynamicIDAttention]:
    """The modules stage 1 trains: loaded from init_weights, or new at the base models' widths."""
    torch.manual_seed(config.seed)  # the new modules' initial weights are part of the run
    if not config.init_weights:
        face_encoder = FaceEncoder.for_width(
            id_dim, frozen.image_encoder.config.hidden_size, frozen.unet.config.cross_attention_dim
        )
        return face_encoder, DynamicIDAttention.for_unet(frozen.unet, rank=config.lora_rank)
    start = load_weights(config.init_weights, processor_layout(frozen.unet))
    if start.face_encoder is None or start.attention is None:
        raise td.TrainingDataError(f"init_weights {config.init_weights} lacks the face encoder or SAA")
    if start.face_encoder.config.id_dim != id_dim:
        raise td.TrainingDataError(
            f"init_weights takes {start.face_encoder.config.id_dim}-d embeddings; the data has {id_dim}-d"
        )
    return start.face_encoder, start.attention


def _anchor_loss(config: AnchorConfig, frozen: Frozen, trainer: Trainer, batches: td.ReadAhead, cache) -> Callable:
    """loss_of(micro_step) for stage 1: the denoising loss with the face encoder's ID tokens through SAA,
    over this process's share of the global batch."""
    blank_clip = frozen.clip([None])[0] if cache is not None else None  # the cached path's dropped image

    def loss_of(micro: int):
        batch = batches[micro]
        generators = [td.step_generator(config.seed + 2, micro, place) for place in batch["places"]]
        embeddings = batch["embeddings"].to(frozen.device)
        if cache is None:
            clip = frozen.clip(batch["references"])
        else:
            clip = torch.stack(
                [blank_clip if c is None else c.to(blank_clip.device, blank_clip.dtype) for c in batch["clip"]]
            )
        text, _ = frozen.text(batch["captions"])
        noisy, timesteps, target = frozen.noisy(frozen.latents(batch["pixels"]), generators)
        prediction = trainer.model(noisy, timesteps, text, embeddings, clip)
        trainer.count_faces(len(batch["places"]))
        return F.mse_loss(prediction.float(), target.float()), {}

    return loss_of


def train_anchor(config: AnchorConfig) -> dict:
    faces = td.load_faces(config.data, keep_outliers=config.keep_outliers)
    face_analysis = td.face_analysis_of(config.data)
    sampler = td.AnchorSampler(faces)
    id_dim = td.embedding_dim(faces)
    trainer = Trainer(config, "anchor")
    trainer.identity = td.data_identity(config.data)
    frozen = Frozen(config, trainer.device, trainer.weight_dtype)
    settings = SAASettings(num_persons=1, gate=config.gate, detach_gate=not config.gate_gradients)
    trainer.prepare(AnchorModel(*_anchor_modules(config, frozen, id_dim), frozen.unet, settings))
    install_processors(frozen.unet, trainer.unwrapped().attention)
    if sampler.single_photo:
        trainer.log(
            f"note: {len(sampler.single_photo)} of {len(sampler.groups)} identities have one photo; "
            "their reference is the target photo itself"
        )
    cache = cache_clip_features(config, faces, frozen, trainer) if config.cache_clip else None
    drops = (config.drop_text, config.drop_image, config.drop_both)
    batches = td.ReadAhead(
        td.AnchorBatches(
            sampler, config.seed, config.batch_size, config.resolution, id_dim, drops, trainer.places(), cache
        ),
        config.data_workers,
    )

    def weights_now() -> DynamicIDWeights:
        module = trainer.unwrapped()
        return DynamicIDWeights(
            face_encoder=module.face_encoder, attention=module.attention, face_analysis=face_analysis
        )

    try:
        loss_of = _anchor_loss(config, frozen, trainer, batches, cache)
        sample = _sampler_callback(config, frozen, weights_now, sampler.faces[0].jpg, face_analysis)
        history = trainer.run(loss_of, sample)
    finally:
        batches.close()
    extra = {
        "stage": "anchor",
        "gate_during_training": config.gate,
        "gradients_through_gate": config.gate_gradients,
        "single_photo_identities": len(sampler.single_photo),
        "identities": len(sampler.groups),
        "faces": len(faces),
    }
    paths = _write_final(weights_now(), config, trainer, extra)
    return {
        "history": history,
        "paths": paths,
        "modules": trainer.unwrapped(),
        "frozen": frozen,
        "main": trainer.is_main,
    }


def cache_clip_features(config: AnchorConfig, faces: list[td.Face], frozen: Frozen, trainer: Trainer) -> dict[str, str]:
    """A first pass: every face's CLIP image features, written once per image encoder under
    output/clip-cache/<encoder>/<name>.safetensors (the main process writes, the others wait).
    Returns face name -> file. A rerun, or a resumed run, reuses what is there."""
    from safetensors.torch import save_file

    encoder = hashlib.sha256(
        (os.path.abspath(config.clip_image_encoder) + frozen.image_encoder.config.to_json_string()).encode()
    ).hexdigest()[:12]
    folder = os.path.join(config.output, "clip-cache", encoder)
    paths = {face.name: os.path.join(folder, f"{face.name}.safetensors") for face in faces}
    if trainer.is_main:
        os.makedirs(folder, exist_ok=True)
        todo = list({face.name: face for face in faces if not os.path.exists(paths[face.name])}.values())
        for start in range(0, len(todo), 16):
            chunk = todo[start : start + 16]
            features = frozen.clip([td.read_rgb(face.jpg) for face in chunk]).cpu()
            for face, feature in zip(chunk, features):
                partial = paths[face.name] + ".partial"
                save_file({"clip": feature.contiguous()}, partial)
                os.replace(partial, paths[face.name])  # a killed pass leaves no half-written file
        if todo:
            trainer.log(f"cached the CLIP features of {len(todo)} faces in {folder}")
    trainer.accelerator.wait_for_everyone()
    return paths


def cache_tokens(
    config: ReconfigConfig, faces, face_encoder: FaceEncoder, frozen: Frozen, trainer: Trainer
) -> dict[str, torch.Tensor]:
    """ID tokens of every photo through the frozen face encoder, computed once and kept on disk. The main
    process computes and writes them; the others wait, then read the file."""
    path = os.path.join(config.output, f"token_cache-{weights_digest(face_encoder)}.pt")
    if trainer.is_main:
        _compute_tokens(path, faces, face_encoder, frozen)
    trainer.accelerator.wait_for_everyone()
    return torch.load(path, weights_only=True)


def _compute_tokens(path: str, faces, face_encoder: FaceEncoder, frozen: Frozen) -> None:
    if os.path.isfile(path):
        try:
            if set(torch.load(path, weights_only=True)) >= {f.name for f in faces}:
                return
        except Exception as err:  # a damaged cache is computed again
            logger.warning("recomputing the token cache %s: %s", path, first_line(err))
    tokens = {}
    with torch.no_grad():
        for face in faces:
            embedding = td.read_embedding(face.pt)[None].to(frozen.device)
            tokens[face.name] = face_encoder(embedding, frozen.clip([td.read_rgb(face.jpg)]).float())[0].cpu()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(tokens, path + ".tmp")
    os.replace(path + ".tmp", path)


def _reconfig_modules(config: ReconfigConfig, frozen: Frozen, faces: list[td.Face]) -> tuple:
    """The frozen stage-1 parts (installed on the UNet) and the stage-2 parts to train (the stage-1 file's, or
    new ones)."""
    stage1 = load_weights(config.weights, processor_layout(frozen.unet))
    if stage1.face_encoder is None or stage1.attention is None:
        raise td.TrainingDataError(f"weights {config.weights} lack the stage-1 face encoder or SAA")
    face_encoder = stage1.face_encoder.to(frozen.device).eval().requires_grad_(False)
    attention = stage1.attention.to(frozen.device).requires_grad_(False)
    install_processors(frozen.unet, attention)
    if face_encoder.config.id_dim != td.embedding_dim(faces):
        raise td.TrainingDataError(
            f"the stage-1 face encoder takes {face_encoder.config.id_dim}-d embeddings; "
            f"the data has {td.embedding_dim(faces)}-d"
        )
    face_analysis = _same_face_analysis(config, stage1.face_analysis, td.face_analysis_of(config.data))
    start = stage1
    if config.init_weights:
        start = load_weights(config.init_weights, processor_layout(frozen.unet))
        if start.imr is None or start.keypoint_encoder is None:
            raise td.TrainingDataError(f"init_weights {config.init_weights} lack IMR or the KeyPointEncoder")
    if start.imr is not None and start.keypoint_encoder is not None:
        return face_encoder, attention, start.imr, start.keypoint_encoder, face_analysis
    width = frozen.text_encoder.config.hidden_size
    torch.manual_seed(config.seed)
    imr = IMR.for_width(frozen.unet.config.cross_attention_dim, width, config.imr_depth)
    keypoints = KeyPointEncoder(out_dim=width, base=keypoint_base_for(width))
    return face_encoder, attention, imr, keypoints, face_analysis


def _same_face_analysis(config: ReconfigConfig, of_weights: dict | None, of_data: dict | None) -> dict | None:
    """Stage 2's data must have been analysed with stage 1's embedder; the weights keep the record."""
    if of_weights and of_data and of_weights.get("embedder") != of_data.get("embedder"):
        raise td.TrainingDataError(
            f"the stage-1 weights {config.weights} were trained on {of_weights.get('embedder')} embeddings but "
            f"{config.data} holds {of_data.get('embedder')} embeddings; prepare the data with the same embedder"
        )
    return of_data or of_weights


def _ldc_inputs(config: ReconfigConfig, frozen: Frozen, targets, wanted, context, generator) -> dict:
    """What L_LDC needs for one identity: its targets' noisy latents, and the UNet's prediction with the
    targets' own ID tokens, which the prediction with the edited tokens is compared to."""
    latents = frozen.latents(torch.stack([td.read_image(f.jpg, config.resolution) for f in targets]))
    noisy, timesteps, _ = frozen.noisy(latents, [generator] * len(targets))
    text = context.expand(len(targets), -1, -1)
    with torch.no_grad():
        context_and_ids = torch.cat([text, wanted.to(text.dtype)], 1)
        kwargs = {"dynamicid": SAASettings(num_persons=1)}
        reference = frozen.unet(noisy, timesteps, context_and_ids, cross_attention_kwargs=kwargs).sample
    return {"noisy": noisy, "timesteps": timesteps, "text": text, "reference": reference}


def _reconfig_loss(config: ReconfigConfig, frozen: Frozen, trainer: Trainer, sampler, tokens) -> Callable:
    """loss_of(micro_step) for stage 2: L_DFM on the edited ID tokens, plus lambda * L_LDC, averaged over
    this process's identities of the global batch (`batch_size` identities per step)."""
    used = [f for group in sampler.groups.values() for f in group]
    maps = {f.name: landmark_map_to_tensor(td.read_map96(f.png)) for f in used}
    prompts = sorted({f.face_prompt for f in used})
    _, pooled_all = frozen.text(prompts)
    pooled = {p: pooled_all[i].float() for i, p in enumerate(prompts)}
    context, _ = frozen.text([config.prompt])
    device, own_places = frozen.device, trainer.places()

    def item_for(micro: int, place: int) -> dict:
        source, targets = sampler.pick(config.seed, micro, place)
        item = {"maps": torch.stack([maps[f.name] for f in [source, *targets]]).to(device)}
        if place not in own_places:
            return item  # another process's identity: its maps only (see ReconfigModel)
        item |= {
            "prompts": torch.stack([pooled[f.face_prompt] for f in [source, *targets]]).to(device),
            "source_tokens": tokens[source.name].to(device),
            "wanted": torch.stack([tokens[f.name] for f in targets]).to(device),
        }
        if config.ldc_weight > 0:
            generator = td.step_generator(config.seed + 2, micro, place)
            item |= _ldc_inputs(config, frozen, targets, item["wanted"], context, generator)
        return item

    def loss_of(micro: int):
        items = [item_for(micro, place) for place in range(config.batch_size)]
        mine = [item for item in items if "source_tokens" in item]
        trainer.count_faces(len(mine))
        dfms, ldcs = [], []
        for item, (edited, prediction) in zip(mine, trainer.model(items)):
            dfms.append(F.mse_loss(edited.float(), item["wanted"].float()))
            if prediction is not None:
                ldcs.append(F.mse_loss(prediction.float(), item["reference"].float()))
        dfm = torch.stack(dfms).mean()
        if not ldcs:
            return dfm, {"dfm": float(dfm.detach())}
        ldc = torch.stack(ldcs).mean()
        return dfm + config.ldc_weight * ldc, {"dfm": float(dfm.detach()), "ldc": float(ldc.detach())}

    return loss_of


def train_reconfig(config: ReconfigConfig) -> dict:
    if not config.weights:
        raise ConfigError("reconfig needs the stage-1 weights: set weights to a folder (ours or the authors')")
    faces = td.load_faces(config.data, keep_outliers=config.keep_outliers)
    sampler = td.ReconfigSampler(faces, config.max_targets)
    trainer = Trainer(config, "reconfig")
    frozen = Frozen(config, trainer.device, trainer.weight_dtype)
    face_encoder, attention, imr, keypoints, face_analysis = _reconfig_modules(config, frozen, faces)
    stage1 = weights_digest(face_encoder) + weights_digest(attention)
    trainer.identity = td.data_identity(config.data) | {"stage1_weights_digest": stage1}
    used = [f for group in sampler.groups.values() for f in group]
    tokens = cache_tokens(config, used, face_encoder, frozen, trainer)
    loss_of = _reconfig_loss(config, frozen, trainer, sampler, tokens)
    trainer.prepare(ReconfigModel(imr, keypoints, frozen.unet))
    if sampler.skipped:
        trainer.log(f"note: {len(sampler.skipped)} identities have one photo and are left out of reconfig")
    history = trainer.run(loss_of)
    module = trainer.unwrapped()
    weights = DynamicIDWeights(
        face_encoder=face_encoder,
        attention=attention,
        imr=module.imr,
        keypoint_encoder=module.keypoint_encoder,
        face_analysis=face_analysis,
    )
    extra = {"stage": "reconfig", "identities": len(sampler.groups), "skipped_single_photo": len(sampler.skipped)}
    paths = _write_final(weights, config, trainer, extra)
    return {"history": history, "paths": paths, "modules": module, "frozen": frozen, "main": trainer.is_main}
