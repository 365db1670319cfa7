"""The Gradio page and API of `dynamicid serve`.

Page: one to four person panels (photo, checked on upload; expression and orientation, or a face prompt of
one's own; optional target landmarks; a box), a layout preview that follows the size, prompts and settings
(advanced ones folded), and results (gallery, gate maps, the PNGs with their JSON sidecars to download).
API: `/generate` takes the prompt, the photos as files, and JSON lists of face prompts and boxes plus a
JSON object of settings, and returns the images and their sidecars (README: gradio_client and curl)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import closing
from dataclasses import asdict, fields
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw

from dynamicid.errors import DynamicIDError
from dynamicid.faces import face_prompt
from dynamicid.generation.layout import automatic_boxes
from dynamicid.generation.request import SETTING_RANGES, GenerationError, Settings, check_settings, default_size
from dynamicid.responsible.credentials import ContentSigner
from dynamicid.responsible.safety import build_safety_filter
from dynamicid.serving.engine import Engine, GenerationRequest, PersonRequest

logger = logging.getLogger(__name__)
# Gradio reports usage to its makers unless told not to: a server of people's faces does not (the
# operator may set it to True).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MAX_PERSONS = 4
AS_IN_PHOTO = "as in the photo"
EXPRESSIONS = (AS_IN_PHOTO, *sorted(face_prompt.EMOTIONS, key=lambda e: (e != "neutral", e)))  # all seven
ORIENTATIONS = (AS_IN_PHOTO, "front", "side left", "side right", "up", "down")
_POSES = {
    "front": (None, "front", None),
    "side left": (None, "side", "left"),
    "side right": (None, "side", "right"),
    "up": ("up", "front", None),
    "down": ("down", "front", None),
}
BOX_FIELDS = ("x0", "y0", "x1", "y1")


def compose_face_prompt(expression: str, orientation: str, typed: str, measured: str | None) -> str | None:
    """The face prompt a panel asks for: typed text wins; else the choices, each "as in the photo" taken from
    the measured prompt; None when nothing asks for a change (the person is not edited)."""
    if typed and typed.strip():
        return typed.strip()
    if expression == AS_IN_PHOTO and orientation == AS_IN_PHOTO:
        return None
    base = face_prompt.parse(measured) if measured else face_prompt.FacePrompt("neutral", None, "front", None)
    emotion = base.emotion if expression == AS_IN_PHOTO else expression
    tilt, view, side = (base.tilt, base.view, base.side) if orientation == AS_IN_PHOTO else _POSES[orientation]
    return face_prompt.FacePrompt(emotion, tilt, view, side).text()


def layout_preview(boxes: list, width: int, height: int) -> np.ndarray:
    """The image's outline at the chosen aspect ratio with each person's numbered box."""
    scale = 256 / max(width, height)
    canvas = Image.new("RGB", (max(1, round(width * scale)), max(1, round(height * scale))), (236, 238, 242))
    draw = ImageDraw.Draw(canvas)
    colours = [(230, 80, 60), (40, 120, 220), (40, 170, 90), (200, 140, 30)]
    for index, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0, x1, y1 = box[0] * canvas.width, box[1] * canvas.height, box[2] * canvas.width, box[3] * canvas.height
        draw.rectangle((x0, y0, x1, y1), outline=colours[index % 4], width=3)
        draw.text((x0 + 4, y0 + 2), str(index + 1), fill=colours[index % 4])
    return np.asarray(canvas)


def _boxes_from_fields(count: int, values: list) -> list:
    """Four numbers per person; a person whose fields are all empty (or all 0) has no box."""
    boxes = []
    for index in range(count):
        numbers = values[4 * index : 4 * index + 4]
        boxes.append(None if all(v in (None, "", 0) for v in numbers) else tuple(float(v or 0) for v in numbers))
    return boxes


def _page_settings(given: dict, tiny: bool) -> Settings:
    """The page's controls as `Settings`, through the same check as the API and the command line. Only what
    differs from the page's starting values is taken from the controls, so untouched controls keep the
    shared defaults; an empty optional field (size, layout strength and steps) is automatic, as in generate."""
    wanted = {}
    for name, start in asdict(page_defaults(tiny)).items():
        value = _page_value(name, given.get(name))
        if value is None or value == start:
            continue
        wanted[name] = value
    return check_settings(page_defaults(tiny).changed() | wanted, "the page's settings")


OPTIONAL_FIELDS = ("width", "height", "infer_scale", "infer_end")  # text fields: empty is automatic


def _page_value(name: str, value):
    """A control's value as the settings type it: text fields parsed (empty: None, automatic)."""
    if isinstance(value, str) and name in OPTIONAL_FIELDS:
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            raise GenerationError(f"{name} must be a number or empty (automatic), not {text[:20]!r}") from None
        return int(number) if name in INTEGER_SETTINGS and number.is_integer() else number
    if value in (None, ""):
        return None
    return int(value) if name in INTEGER_SETTINGS and isinstance(value, float) and value.is_integer() else value


# The settings the page's number fields must hand over as whole numbers: those `Settings` types as int.
INTEGER_SETTINGS = tuple(f.name for f in fields(Settings) if str(f.type).startswith("int"))


def page_defaults(tiny: bool) -> Settings:
    """The page's starting values: the shared defaults, with 4 steps under --tiny (its random models make
    noise; sizes stay automatic, as they are fast at the real sizes)."""
    return Settings(steps=4) if tiny else Settings()


def run_generation(engine: Engine, request: GenerationRequest, progress=None):
    """Runs the request on a worker thread and yields (None, status) while it runs, then (result, status).
    Closing the generator (the page's Cancel, a client's cancel) stops the run at its next step."""
    import gradio as gr

    stop, state = threading.Event(), {"done": 0}
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = engine.generate(request, lambda done, total: state.update(done=done), stop.is_set)
        except DynamicIDError as err:
            outcome["error"] = str(err)
        except Exception as err:  # never a stack trace in the page; the log has it
            logger.exception("generation failed")
            outcome["error"] = f"internal error: {type(err).__name__}: {err}"

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        shown, last = -1, time.monotonic()
        while worker.is_alive():
            worker.join(0.02)  # short: the run's end is noticed at once
            if state["done"] != shown or time.monotonic() - last > 0.5:  # a yield lets a cancel in
                shown, last = state["done"], time.monotonic()
                if progress is not None:
                    progress((shown, request.steps), desc="denoising", unit="steps")
                yield None, f"step {shown} of {request.steps}"
    finally:
        if worker.is_alive():  # closed early: cancelled. Not joined: this may run on the server's event loop, and
            stop.set()  # the run ends at its next step on its own, holding the engine's lock until then
    if "error" in outcome:
        raise gr.Error(outcome["error"], print_exception=False)
    result = outcome["result"]
    yield (
        result,
        f"done in {result.seconds:.1f} s, seed {result.sidecars[0].get('seed', request.seed)}"
        + _identities_said(result.sidecars[0]),
    )


def _identities_said(sidecar: dict) -> str:
    """The identity check's outcome for the status line (the first image's, and the verdict)."""
    from dynamicid.generation.outputs import identity_check_lines

    record = sidecar.get("identity_check")
    if not record:
        return ""
    lines = identity_check_lines(record)
    return f"; {lines[0]}; {lines[-1]}"


def _person_panel(gr, index: int, visible: bool) -> dict:
    with gr.Column(visible=visible, min_width=220, elem_id=f"person{index}") as column:
        photo = gr.Image(
            type="filepath", label=f"Person {index + 1}", height=200, elem_id=f"person{index}-photo", sources=["upload"]
        )
        status = gr.Markdown("upload a photo with one face", elem_id=f"person{index}-status")
        expression = gr.Radio(
            list(EXPRESSIONS), value=AS_IN_PHOTO, label="Expression", elem_id=f"person{index}-expression"
        )
        orientation = gr.Radio(
            list(ORIENTATIONS), value=AS_IN_PHOTO, label="Head", elem_id=f"person{index}-orientation"
        )
        typed = gr.Textbox(
            label="or your own face prompt",
            placeholder="in a happy expression, in side view, turned left",
            elem_id=f"person{index}-prompt",
        )
        with gr.Accordion("Target landmarks (optional)", open=False):
            landmarks = gr.Image(type="filepath", label="96x96 map or prep's NAME.png", height=120, sources=["upload"])
        with gr.Row():
            box = [
                gr.Number(label=name, precision=3, minimum=0, maximum=1, min_width=50, elem_id=f"person{index}-{name}")
                for name in BOX_FIELDS
            ]
    return {
        "column": column,
        "photo": photo,
        "status": status,
        "expression": expression,
        "orientation": orientation,
        "typed": typed,
        "landmarks": landmarks,
        "box": box,
        "measured": gr.State(None),
    }


def _settings_controls(gr, page: SimpleNamespace, tiny: bool) -> None:
    """The prompt, the size, the seed and the advanced settings; the layout preview beside them."""
    start = page_defaults(tiny)  # the shared defaults (generation.request.Settings)
    auto = "empty: automatic"
    with gr.Row():
        with gr.Column(scale=2):
            page.prompt = gr.Textbox(label="Prompt", value="two friends at a cafe, film photo", elem_id="prompt")
            page.negative_prompt = gr.Textbox(
                label="Negative prompt", value=start.negative_prompt or "", placeholder="none"
            )
            with gr.Row():
                size_help = "empty: 512 for one person, 768 for two, 1024 for more"
                page.width = _optional_number(gr, start.width, "Width", size_help, "width")
                page.height = _optional_number(gr, start.height, "Height", size_help, "height")
            page.seed = gr.Number(start.seed, label="Seed (-1: a random one)", precision=0, elem_id="seed")
            with gr.Accordion("Advanced", open=False):
                low, high = SETTING_RANGES["steps"]
                page.steps = gr.Slider(low, high, value=start.steps, step=1, label="Steps", elem_id="steps")
                page.guidance = gr.Slider(0.0, 12.0, value=start.guidance, step=0.5, label="Guidance")
                page.id_scale = gr.Slider(
                    0.0, 1.5, value=start.id_scale, step=0.05, label="Identity strength (id_scale)"
                )
                page.infer_scale = _optional_number(
                    gr,
                    start.infer_scale,
                    "Layout strength (infer_scale; empty: 2 with boxes or several persons, else 0)",
                    auto,
                    "infer-scale",
                )
                page.infer_end = _optional_number(
                    gr,
                    start.infer_end,
                    "Layout steps (infer_end; empty: 12 with boxes or several persons, else 0)",
                    auto,
                    "infer-end",
                )
                page.gate_maps = gr.Checkbox(
                    start.gate_maps, label="Show where each identity went (gate maps)", elem_id="gates"
                )
        with gr.Column(scale=1):
            page.auto = gr.Checkbox(True, label="Automatic layout", elem_id="auto")
            page.preview = gr.Image(label="Layout", interactive=False, height=260, elem_id="preview")


def _optional_number(gr, start, label: str, placeholder: str, elem_id: str):
    """A number a user may leave empty for the automatic value: a one-line text field (a number field shows,
    and sends, 0 when empty)."""
    return gr.Textbox(
        "" if start is None else str(start), label=label, placeholder=placeholder, max_lines=1, elem_id=elem_id
    )


def _result_controls(gr, page: SimpleNamespace) -> None:
    """Generate and Cancel, the status line, the images, the sidecar and the files to download."""
    with gr.Row():
        page.run = gr.Button("Generate", variant="primary", elem_id="generate")
        page.cancel = gr.Button("Cancel", elem_id="cancel")
    page.status = gr.Markdown("", elem_id="message")
    page.gallery = gr.Gallery(label="Result", columns=2, height=400, elem_id="result")
    page.sidecar = gr.JSON(label="Settings used (the JSON sidecar)", elem_id="sidecar")
    page.files = gr.File(label="Download: PNG and JSON sidecar", file_count="multiple", elem_id="files")


def build_app(
    engine: Engine,
    examples: list[list] | None = None,
    tiny: bool = False,
    concurrency: int = 1,
    keep_seconds: float | None = None,
):
    """The Blocks app over `engine`. `examples`: rows of (photo 1, photo 2, prompt) a newcomer can click.
    `concurrency`: generations at once, page and API together (one pipeline: 1). `keep_seconds`: uploads and
    results older than this are deleted (checked hourly, or as often as that is shorter)."""
    import gradio as gr

    retention = (int(min(3600, keep_seconds)), int(keep_seconds)) if keep_seconds else None
    with gr.Blocks(title="DynamicID", delete_cache=retention, analytics_enabled=False) as app:
        gr.Markdown(
            "# DynamicID\nSeveral people in one image, each from one photo, each with their own expression "
            "and head orientation, placed where you want them."
        )
        model = gr.Markdown(_model_line(engine), elem_id="model-version")
        gr.Markdown(_responsible_line(engine), elem_id="responsible")

        def current_model() -> str:
            return _model_line(engine)

        app.load(current_model, outputs=model)  # each page load shows the model serving now
        page = SimpleNamespace(concurrency=concurrency, app=app, tiny=tiny)
        page.count = gr.Slider(1, MAX_PERSONS, value=2, step=1, label="Persons", elem_id="count")
        with gr.Row():
            page.panels = [_person_panel(gr, i, i < 2) for i in range(MAX_PERSONS)]
        _settings_controls(gr, page, tiny)
        _result_controls(gr, page)
        _wire_layout(gr, page)
        _wire_photos(gr, engine, page)
        _wire_generation(gr, engine, page)
        _add_api(gr, engine, concurrency)
        if examples:
            gr.Examples(examples, [page.panels[0]["photo"], page.panels[1]["photo"], page.prompt], label="Examples")
    return app


def _responsible_line(engine: Engine) -> str:
    """What the page tells its users about the images and the people in them (issue 37 §6)."""
    marked = (
        "Every image is marked as AI-generated: an invisible watermark naming the model and the request, and "
        "the IPTC digital source type in its metadata."
        if engine.watermark
        else "**The watermark is off on this server**: images carry only the AI-generated label in their metadata."
    )
    signed = (
        f" Each image carries signed C2PA content credentials (signer: {engine.signer.issuer}); check one with "
        "`dynamicid verify` or the /verify API."
        if engine.signer
        else ""
    )
    consent = (
        " Photos are checked against a consent registry; people on a deny list are refused." if engine.consent else ""
    )
    safety = " A safety filter withholds images that show nudity." if engine.safety else ""
    return f"<small>{marked}{signed}{consent}{safety} Use photos only of people who agreed.</small>"


def _model_line(engine: Engine) -> str:
    return f"Model: {engine.model_version}" if engine.model_version else ""


def _whole(value) -> int | None:
    """A size field: empty (or not a positive whole number yet, while typing) is None, the automatic size."""
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _box_fields(page) -> list:
    return [field for panel in page.panels for field in panel["box"]]


def _wire_layout(gr, page) -> None:
    """Automatic boxes follow the persons and the size while "Automatic layout" is on; typing in a box field
    turns it off. The preview always shows the boxes in the fields."""
    fields = _box_fields(page)

    def relayout(count, width, height, auto, *values):
        count = int(count)
        height, width = default_size(count, _whole(height), _whole(width))
        if auto:
            boxes = automatic_boxes(count, width, height) if count > 1 else []
            values = [round(v, 3) for box in boxes for v in box] + [None] * (4 * MAX_PERSONS - 4 * len(boxes))
        visible = [gr.update(visible=i < count) for i in range(MAX_PERSONS)]
        return [*values, layout_preview(_boxes_from_fields(count, list(values)), width, height), *visible]

    outputs = [*fields, page.preview, *[panel["column"] for panel in page.panels]]
    inputs = [page.count, page.width, page.height, page.auto, *fields]
    for trigger in (page.count.change, page.width.change, page.height.change, page.auto.change, page.app.load):
        trigger(relayout, inputs, outputs, queue=False, api_name=False)

    def edited(count, width, height, auto, *values):
        height, width = default_size(int(count), _whole(height), _whole(width))
        return False, layout_preview(_boxes_from_fields(int(count), list(values)), width, height)

    for field in fields:
        field.input(edited, inputs, [page.auto, page.preview], queue=False, api_name=False)


def _checked_upload(component, engine: Engine) -> None:
    """Gradio's Image opens an upload with Pillow before any handler runs, so a file that is no image, or a
    bomb, failed there with an empty error on the page. Checked by our rules first, such a file reaches the
    handlers by its path, and they say why it cannot be used in the command line's words."""
    from dynamicid.imagefile import Rejected, check_header

    preprocess = component.preprocess

    def checked(payload):
        if payload is not None:
            try:
                check_header(payload.path, engine.rules)
            except (Rejected, OSError):
                return payload.path
        return preprocess(payload)

    component.preprocess = checked


def _wire_photos(gr, engine: Engine, page) -> None:
    """A photo is analysed as soon as it is uploaded: its face prompt, or why it cannot be used."""
    for panel in page.panels:
        _checked_upload(panel["photo"], engine)
        _checked_upload(panel["landmarks"], engine)

    def check(path):
        result = engine.check_photo(path)
        if not path:
            return "upload a photo with one face", None
        return (f"face found: *{result.message}*" if result.ok else f"**cannot use this photo:** {result.message}"), (
            result.message if result.ok else None
        )

    for panel in page.panels:
        panel["photo"].change(
            check,
            panel["photo"],
            [panel["status"], panel["measured"]],
            concurrency_id="analysis",
            concurrency_limit=2,
            api_name=False,
        )


def _panel_inputs(page) -> list:
    return [
        c
        for panel in page.panels
        for c in (
            panel["photo"],
            panel["expression"],
            panel["orientation"],
            panel["typed"],
            panel["landmarks"],
            panel["measured"],
        )
    ]


# The page's settings, in the order `generate` receives them (then the person panels, then the box fields).
PAGE_SETTINGS = (
    "count",
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "seed",
    "steps",
    "guidance",
    "id_scale",
    "infer_scale",
    "infer_end",
    "gate_maps",
    "auto",
)


def _request_from_page(gr, values: tuple, tiny: bool) -> GenerationRequest:
    """A GenerationRequest from the page's values (PAGE_SETTINGS, 6 per person panel, then the box fields)."""
    given = dict(zip(PAGE_SETTINGS, values))
    count, first_box = int(given["count"]), len(PAGE_SETTINGS) + 6 * MAX_PERSONS
    panels = [values[len(PAGE_SETTINGS) + 6 * i : len(PAGE_SETTINGS) + 6 * (i + 1)] for i in range(count)]
    boxes = [None] * count if given["auto"] else _boxes_from_fields(count, list(values[first_box:]))
    missing = [str(i + 1) for i, panel in enumerate(panels) if not panel[0]]
    if missing:
        raise gr.Error(f"person {', '.join(missing)}: upload a photo first", print_exception=False)
    try:
        settings = _page_settings(given, tiny)
        persons = [
            PersonRequest(p[0], compose_face_prompt(p[1], p[2], p[3], p[5]), p[4] or None, boxes[i], f"person {i + 1}")
            for i, p in enumerate(panels)
        ]
    except DynamicIDError as err:
        raise gr.Error(str(err), print_exception=False) from None
    return GenerationRequest(given["prompt"] or "", persons, settings)


def _api_request(prompt, photos, face_prompts, boxes, settings) -> GenerationRequest:
    """A GenerationRequest from the API's values: JSON lists of face prompts and boxes (one entry per photo,
    null for none) and a JSON object of settings, each checked for its type, never coerced."""
    try:
        prompts, box_list, options = (
            json.loads(text or default) for text, default in ((face_prompts, "[]"), (boxes, "[]"), (settings, "{}"))
        )
    except ValueError as err:
        raise GenerationError(f"face_prompts, boxes and settings must be JSON: {err}") from None
    paths = [getattr(photo, "name", photo) for photo in photos or []]
    if not paths:
        raise GenerationError("give at least one photo")
    for name, listed in (("face_prompts", prompts), ("boxes", box_list)):
        if not isinstance(listed, list) or len(listed) > len(paths):
            raise GenerationError(
                f"{name} must be a JSON list with at most one entry per photo ({len(paths)}), null for none; "
                f"got {type(listed).__name__} {str(listed)[:60]}"
            )
    if any(p is not None and not isinstance(p, str) for p in prompts):
        raise GenerationError("face_prompts entries must be text or null")
    if any(b is not None and not (isinstance(b, list) and len(b) == 4) for b in box_list):
        raise GenerationError("boxes entries must be [x0, y0, x1, y1] (fractions of the image) or null")
    prompts, box_list = prompts + [None] * (len(paths) - len(prompts)), box_list + [None] * (len(paths) - len(box_list))
    persons = [
        PersonRequest(path, prompts[i] or None, None, tuple(box_list[i]) if box_list[i] else None, f"person {i + 1}")
        for i, path in enumerate(paths)
    ]
    return GenerationRequest(prompt or "", persons, check_settings(options, "settings"))


def _wire_generation(gr, engine: Engine, page) -> None:
    def generate(*values, progress=gr.Progress()):
        request = _request_from_page(gr, values, page.tiny)
        with closing(run_generation(engine, request, progress)) as running:  # closed with us: a cancel reaches it
            for result, message in running:
                if result is None:
                    yield gr.update(), gr.update(), gr.update(), message
                    continue
                shown = [(path, "result") for path in result.images]
                shown += [(path, "gate map") for path in result.overlays]
                yield shown, result.sidecars[0], result.files, message

    event = page.run.click(
        generate,
        [*(getattr(page, name) for name in PAGE_SETTINGS), *_panel_inputs(page), *_box_fields(page)],
        [page.gallery, page.sidecar, page.files, page.status],
        concurrency_id="gpu",
        concurrency_limit=page.concurrency,
        api_name=False,
    )
    page.cancel.click(None, None, None, cancels=[event], queue=False, api_name=False)


def _add_api(gr, engine: Engine, concurrency: int) -> None:
    """/generate for programs: prompt, photos (files), face prompts and boxes (JSON lists, one entry per photo,
    null for none) and settings (a JSON object: steps, guidance, seed, height, width, id_scale, infer_scale,
    infer_end, negative_prompt). Returns the images and the first image's JSON sidecar."""
    with gr.Row(visible=False):
        prompt, photos = gr.Textbox(), gr.File(file_count="multiple")
        face_prompts, boxes, settings = gr.Textbox(value="[]"), gr.Textbox(value="[]"), gr.Textbox(value="{}")
        images, sidecar, button = gr.Gallery(), gr.JSON(), gr.Button()

    def generate(prompt, photos, face_prompts, boxes, settings):
        try:
            request = _api_request(prompt, photos, face_prompts, boxes, settings)
        except DynamicIDError as err:
            raise gr.Error(str(err), print_exception=False) from None
        with closing(run_generation(engine, request)) as running:  # closed with us: a client's cancel reaches it
            for result, _ in running:  # yields while it runs, so the cancel gets in between two
                yield (gr.skip(), gr.skip()) if result is None else (result.images, result.sidecars[0])

    button.click(
        generate,
        [prompt, photos, face_prompts, boxes, settings],
        [images, sidecar],
        api_name="generate",
        concurrency_id="gpu",
        concurrency_limit=concurrency,
    )
    _add_verify_api(gr, engine)


def _add_verify_api(gr, engine: Engine) -> None:
    """/verify: `dynamicid verify --json` for uploaded images, against the model this server runs. Each entry
    names its upload as `image` (a `path` key would read as a file to Gradio's clients)."""
    from dynamicid.responsible.verify import check_image

    with gr.Row(visible=False):
        files, report, button = gr.File(file_count="multiple"), gr.JSON(), gr.Button()

    def verify(files):
        found = []
        for upload in files or []:
            path = upload if isinstance(upload, str) else upload.name
            try:
                entry = check_image(path, engine.model_version or engine.pipe.model_version).as_dict()
            except (DynamicIDError, OSError) as err:
                entry = {"path": path, "error": str(err)}
            found.append({"image": os.path.basename(entry.pop("path"))} | entry)
        return found

    button.click(verify, [files], [report], api_name="verify", concurrency_id="verify", concurrency_limit=2)


def example_photos(folder: str) -> list[list]:
    """Two example persons made from the scikit-image astronaut the demo already uses: the photo, and the
    photo mirrored with its colours turned, as a second person."""

    from dynamicid.prep.sample import astronaut

    os.makedirs(folder, exist_ok=True)
    first, second = os.path.join(folder, "astronaut.png"), os.path.join(folder, "astronaut_mirrored.png")
    photo = astronaut()
    photo.save(first)
    rgb = np.asarray(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("RGB"))
    Image.fromarray(np.ascontiguousarray(rgb[..., [1, 2, 0]])).save(second)  # channels turned: another look
    return [
        [first, second, "two astronauts in a space station, photo"],
        [first, second, "two friends at a cafe, film photo"],
    ]


def launch(app, config, block: bool = False) -> str:
    """Queue and start `app` as the ServeConfig says. Under auth every POST under /gradio_api needs the login
    (`access.LoginRequired`). Returns the URL."""
    from starlette.middleware import Middleware

    from dynamicid.serving.access import LoginRequired

    app.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    _, url, _ = app.launch(
        server_name=config.host,
        server_port=config.port,
        prevent_thread_lock=not block,
        auth=config.check_auth if config.auth else None,
        max_file_size=f"{config.max_upload_mb}mb",
        quiet=not block,
        app_kwargs={"middleware": [Middleware(LoginRequired)]},
    )
    return url


def _watch(config, snapshots: str):
    """What notices a newly published model: for --weights alone (a published folder) or --base-model alone (a
    published folder or Hub repo), unless --no-reload. A folder is served from copies under `snapshots`."""
    given = [value for value in (config.weights, config.base_model) if value]
    if config.tiny or not config.reload or len(given) != 1 or config.clip_image_encoder:
        return None
    from dynamicid.generation.loading import load_for_use
    from dynamicid.serving.reload import ModelWatch

    return ModelWatch(
        given[0],
        lambda reference: load_for_use(reference, None, None, device=config.device, dtype=config.dtype),
        config.reload_every,
        snapshots=snapshots,
    )


def serve(config, cache, block: bool = True):
    """Loads the models once, builds the page and starts serving, with its files in `cache` (a
    `access.PrivateCache`). Returns (app, engine, url)."""

    from dynamicid.generation import DynamicIDPipeline
    from dynamicid.generation.loading import load_for_use
    from dynamicid.imagefile import ImageRules

    # Checked before the models load: a certificate C2PA refuses, or a filter asked for and missing.
    signer, safety = ContentSigner.build(config.credentials), build_safety_filter(config.safety_filter)
    watch = _watch(config, os.path.join(cache.folder, "models"))
    if config.tiny:
        from dynamicid.testing.tiny_models import make_tiny_models

        models = make_tiny_models(os.path.join(cache.folder, "tiny-models"))
        pipe = DynamicIDPipeline.from_pretrained(models["sd15"], models["dynamicid"], models["clip-image"])
        pipe.set_progress_bar_config(disable=True)
    elif watch is not None:
        pipe = watch.load_current()  # from the server's own copy: the watched files are never mapped
    else:
        pipe = load_for_use(
            config.base_model, config.weights, config.clip_image_encoder, device=config.device, dtype=config.dtype
        )
    engine = Engine(
        pipe,
        ImageRules(max_pixels=config.max_image_pixels, max_bytes=config.max_upload_mb * 2**20),
        output_root=cache.results,
        limits=config.limits,
        watch=watch,
        consent=config.consent,
        watermark=config.watermark,
        signer=signer,
        safety=safety,
        check_identities=config.check_identities,
        retries=config.retries,
    )
    examples = example_photos(os.path.join(cache.folder, "examples"))
    app = build_app(engine, examples, config.tiny, config.concurrency, keep_seconds=config.keep_files_hours * 3600)
    return app, engine, launch(app, config, block)
