"""The work behind `dynamicid serve`, free of any web framework: checking an uploaded photo, encoding persons
once and reusing their tokens, and one generation at a time on the pipeline, with progress and cancellation.

Every request writes into a folder of its own, so one session never sees another's outputs."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dynamicid.faces.analyzer import FaceRules
from dynamicid.filestamps import file_sha256
from dynamicid.generation.outputs import gate_map_image, model_version, save_generation
from dynamicid.generation.request import (
    GenerationError,
    Person,
    RequestLimits,
    Settings,
    check_request,
    default_size,
)
from dynamicid.imagefile import ImageRules, Rejected, load_image, open_image
from dynamicid.responsible.consent import ConsentRefused, photo_hash
from dynamicid.responsible.provenance import COMPOSITE, save_with_provenance

logger = logging.getLogger(__name__)


@dataclass
class PhotoCheck:
    """What the face analysis found on an uploaded reference photo."""

    ok: bool
    message: str  # the measured face prompt, or why the photo is refused
    face: np.ndarray | None = None  # the aligned face, for the page to show


@dataclass
class PersonRequest:
    photo: str  # an uploaded file (a path the web framework gave us, never one a client named)
    face_prompt: str | None = None
    target_landmarks: str | None = None
    box: tuple[float, float, float, float] | None = None
    name: str | None = None


@dataclass
class GenerationRequest:
    """The page's or the API's request: the settings are `generation.request.Settings`, checked by the same
    `check_settings` as the command line's, with the same defaults."""

    prompt: str
    persons: list[PersonRequest]
    settings: Settings = field(default_factory=Settings)
    seed: int = field(init=False)  # the run's seed: the settings', or a random one for -1

    def __post_init__(self) -> None:
        self.seed = self.settings.concrete_seed()

    @property
    def steps(self) -> int:
        return self.settings.steps

    def size(self) -> tuple[int, int]:
        return default_size(len(self.persons), self.settings.height, self.settings.width)


@dataclass
class GenerationResult:
    images: list[str]  # PNG paths
    sidecars: list[dict]
    files: list[str]  # everything written: PNGs, JSON sidecars, gate maps
    overlays: list[str] = field(default_factory=list)  # the gate maps laid over the images
    seconds: float = 0.0
    steps_done: int = 0
    interrupted: bool = False


class Engine:
    """One pipeline, loaded once; generation runs one request at a time on it (a lock), encoded persons are
    kept (least recently used first out) keyed by photo content and edit, so repeated persons cost nothing."""

    def __init__(
        self,
        pipe,
        rules: ImageRules | None = None,
        cache_size: int = 32,
        output_root: str | None = None,
        face_rules: FaceRules | None = None,
        limits: RequestLimits | None = None,
        watch=None,
        consent=None,
        watermark: bool = True,
        signer=None,
        safety=None,
        check_identities: bool = False,
        retries: int = 0,
    ):
        self.pipe = pipe
        self.safety = safety  # a `responsible.safety.SafetyFilter`: flagged images are withheld, never written
        self.watermark = watermark
        self.check_identities, self.retries = check_identities, retries  # serve turns the check on (ServeConfig)
        self.signer = signer  # a `responsible.credentials.ContentSigner`: C2PA credentials in every image written
        self.consent = consent if consent is not None and consent.active else None  # a ConsentOptions
        if self.consent:
            pipe.use_consent(self.consent)
        self.watch = watch  # a `reload.ModelWatch`: a newly published model replaces `pipe` between requests
        self.model_version = watch.label() if watch else None
        pipe.model_version = self.model_version or pipe.model_version
        if watch is not None and watch.probe is None:
            watch.probe = self.probe  # a new model must make an image before it serves
        self.rules = rules or ImageRules(max_pixels=40_000_000, max_bytes=20 * 1024 * 1024)
        self.face_rules = face_rules or FaceRules()
        self.limits = limits or RequestLimits()
        self.cache: OrderedDict[str, object] = OrderedDict()
        self.cache_size = cache_size
        self.output_root = output_root or tempfile.mkdtemp(prefix="dynamicid-serve-")
        self.lock = threading.Lock()
        self.encoded_count = 0  # persons encoded (not taken from the cache), for tests and stats
        self.last: GenerationResult | None = None

    # -- photos ----------------------------------------------------------------------------------
    def load_photo(self, path: str) -> np.ndarray:
        """An upload decoded under the serving limits; refusals are GenerationErrors with the reason."""
        try:
            return load_image(path, self.rules).rgb
        except Rejected as rejection:
            raise GenerationError(f"the photo cannot be used: {rejection.reason}: {rejection.message}") from None

    def check_photo(self, path: str | None) -> PhotoCheck:
        if not path:
            return PhotoCheck(False, "no photo")
        try:
            rgb = self.load_photo(path)
        except GenerationError as err:
            return PhotoCheck(False, str(err))
        gate = self.pipe.consent
        faces = self.pipe.face_analyzer.analyze(rgb, max_faces=3, embed=gate is not None)
        if not faces:
            return PhotoCheck(False, "no face was detected: use a photo with one clear face")
        if len(faces) > 1:
            return PhotoCheck(False, f"{len(faces)} faces were found: crop the photo to the one person")
        side = min(faces[0].box.width, faces[0].box.height)
        if side < self.face_rules.min_face_side:
            return PhotoCheck(
                False, f"the face is {side:.0f} px, below {self.face_rules.min_face_side} px: use a larger photo"
            )
        if gate is not None:
            try:
                gate.check(faces[0].embedding, "this photo", photo_hash(path))
            except ConsentRefused as refused:
                return PhotoCheck(False, str(refused))
        return PhotoCheck(True, faces[0].face_prompt, faces[0].aligned)

    # -- persons ---------------------------------------------------------------------------------
    def _key(self, person: PersonRequest) -> str:
        digest = hashlib.sha256()
        for path in (person.photo, person.target_landmarks):
            if path:
                digest.update(bytes.fromhex(file_sha256(path)))
            digest.update(b"|")
        digest.update((person.face_prompt or "").encode())
        return digest.hexdigest()

    def encode(self, person: PersonRequest, index: int):
        key = self._key(person)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        rgb = self.load_photo(person.photo)
        encoded = self.pipe.encode_persons(
            [Person(rgb, person.face_prompt, person.target_landmarks, None, person.name or f"person {index + 1}")]
        )[0]
        self.encoded_count += 1
        self.cache[key] = encoded
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return encoded

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Checks the request as `generate` does, then runs it alone on the pipeline; `on_step(done, total)`
        after every step; `should_stop()` true ends it at the next step."""
        persons = [
            Person(p.photo, p.face_prompt, p.target_landmarks, p.box, p.name or f"person {i + 1}")
            for i, p in enumerate(request.persons)
        ]
        settings, (height, width) = request.settings, request.size()
        check_request(persons, height, width, settings.steps, settings.guidance, limits=self.limits)
        with self.lock:
            self._switch_to_newer_model()
            started = time.perf_counter()
            embeds = [self.encode(person, index) for index, person in enumerate(request.persons)]
            steps_done = [0]

            def step_end(pipe, step, timestep, tensors):
                steps_done[0] = step + 1
                if on_step is not None:
                    on_step(step + 1, request.steps)
                if should_stop is not None and should_stop():
                    pipe._interrupt = True
                return {}

            result = self.pipe(
                request.prompt,
                persons,
                negative_prompt=settings.negative_prompt,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                height=height,
                width=width,
                seed=request.seed,
                person_embeds=embeds,
                id_scale=settings.id_scale,
                infer_scale=settings.infer_scale,
                infer_end=settings.infer_end,
                return_gate_maps=settings.gate_maps,
                callback_on_step_end=step_end,
                max_output_pixels=self.limits.max_output_pixels,
                max_work=self.limits.max_work,
                watermark=self.watermark,
                check_identities=self.check_identities,
                retries=self.retries,
            )
            done = self._write(result, persons, request, time.perf_counter() - started)
            done.steps_done, done.interrupted = steps_done[0], steps_done[0] < request.steps
            self.last = done
            return done

    def probe(self, pipe) -> None:
        """One step of a small image of one person: a model that cannot make this cannot serve."""
        from dynamicid.prep.sample import astronaut

        photo = np.asarray(astronaut().convert("RGB"))
        pipe.set_progress_bar_config(disable=True)
        pipe("a probe", [Person(photo, None, None, None, "probe")], num_inference_steps=1, height=64, width=64, seed=0)

    def _switch_to_newer_model(self) -> None:
        """Under the lock, so the request now running finishes on the old model and the next starts on the new."""
        newer = self.watch.newer() if self.watch else None
        if newer is not None:
            newer.set_progress_bar_config(disable=True)
            if self.consent:
                newer.use_consent(self.consent)  # the registry embedded by the new model's face analysis
            self.pipe, self.model_version = newer, self.watch.label()
            newer.model_version = self.model_version
            self.cache.clear()  # persons were encoded by the old model's face encoder

    def _withhold_flagged(self, result) -> None:
        """Refuses the request when the safety filter flags one of its images; nothing of it is written."""
        if self.safety is None:
            return
        verdicts = [self.safety.judge(image) for image in result.images]
        found = sorted({item for verdict in verdicts for item in verdict.found})
        if found:
            logger.warning("the safety filter withheld a request's images: %s", ", ".join(found))
            raise GenerationError(
                f"the safety filter withheld the image{'s' if len(verdicts) > 1 else ''}: it found "
                f"{', '.join(found)}. Nothing was kept; change the prompt or the photos."
            )

    def _write(self, result, persons, request: GenerationRequest, seconds: float) -> GenerationResult:
        self._withhold_flagged(result)
        folder = tempfile.mkdtemp(prefix="request-", dir=self.output_root)
        extra = {"model_version": self.model_version} if self.model_version else None
        saved = save_generation(result, persons, folder, "dynamicid", extra=extra, signer=self.signer)
        images, sidecars, files = saved.images, saved.sidecars, saved.files
        overlays = []
        version = model_version(result.metadata, extra)  # the one the images themselves name
        if result.gate_maps is not None:
            for index, path in enumerate(images):
                overlays.append(path[:-4] + "_gates.png")
                overlay = overlay_gates(path, result.gate_maps[index])
                save_with_provenance(overlay, overlays[-1], version, COMPOSITE)
                if self.signer is not None:
                    self.signer.sign(overlays[-1], version, kind=COMPOSITE)
        return GenerationResult(images, sidecars, files, overlays, seconds)


def overlay_gates(image_path: str, gate: np.ndarray) -> Image.Image:
    """The image with its gate map laid over it, half and half, so one sees where the identity went."""
    image = open_image(image_path)
    return Image.blend(image, gate_map_image(gate, image.size), 0.5)
