"""The review page (`dynamicid review DATASET`): a dataset's people as strips of faces, the suggested merges,
the suspected strangers and the copies, and the curator's actions. Every action goes through
`prep.review.decide`, the code path of the command line, so the page and the command line log and apply
decisions the same way."""

from __future__ import annotations

import base64
import html
import io
import logging
import os

from dynamicid.errors import DynamicIDError
from dynamicid.prep import review

logger = logging.getLogger(__name__)

STRIP_FACES = 24  # faces shown per person; the rest are counted
THUMB = 96


def _thumb(path: str) -> str:
    """A small inline JPEG of an aligned face (the page needs no file route into the dataset)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _faces_by_person(dataset: str) -> dict[str, list[tuple[str, str]]]:
    """person -> [(relative_path, aligned face file)] for the kept faces, in manifest order."""

    from dynamicid.prep.outputs import face_paths
    from dynamicid.prep.schema import manifest_rows

    found: dict[str, list[tuple[str, str]]] = {}
    columns = ["relative_path", "identity", "status", "name"]
    for path, person, status, name in manifest_rows(os.path.join(dataset, "manifest.parquet"), columns):
        if status == "ok" and person and name:
            found.setdefault(person, []).append((path, face_paths(dataset, person, name)["jpg"]))
    return found


def people_html(dataset: str, seen: review.Overview) -> str:
    faces = _faces_by_person(dataset)
    rows = []
    for person, splits in seen.people.items():
        counts = ", ".join(f"{split} {count}" for split, count in sorted(splits.items()))
        shown = faces.get(person, [])[:STRIP_FACES]
        more = len(faces.get(person, [])) - len(shown)
        images = "".join(
            f'<img src="{_thumb(file)}" title="{html.escape(path)}" alt="{html.escape(path)}" '
            f'width="{THUMB}" height="{THUMB}" style="display:inline-block;margin:2px">'
            for path, file in shown
        )
        rows.append(
            f'<div class="person" data-person="{html.escape(person)}"><b>{html.escape(person)}</b> '
            f"({counts}){f' and {more} more' if more > 0 else ''}"
            f'<div style="display:flex;flex-wrap:wrap;margin-bottom:8px">{images}</div></div>'
        )
    return "".join(rows) or "<p>No kept faces.</p>"


def findings_html(seen: review.Overview) -> str:
    def table(title: str, head: list[str], rows: list[list]) -> str:
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        return f"<h3>{html.escape(title)} ({len(rows)})</h3><table><tr>{header}</tr>{cells}</table>"

    return (
        table(
            "Suggested merges, closest first",
            ["person", "person", "cosine of their centres", "linking faces"],
            [[s["a"], s["b"], s["cosine"], s["links"]] for s in seen.suggestions],
        )
        + table(
            "Suspected strangers, furthest first",
            ["photo", "under", "distance"],
            [[s["path"], s["person"], s["distance"]] for s in seen.strangers],
        )
        + table(
            "Copies and photos held for review",
            ["photo", "person", "copy of", "why"],
            [[c["path"], c["person"], c["copy_of"] or "", c["reason"]] for c in seen.copies],
        )
    )


class _Actions:
    """What the page's events do: refresh everything, list a person's faces, make a decision."""

    def __init__(self, dataset: str, who: str):
        self.dataset, self.who = dataset, who

    def current(self, message: str = ""):
        import gradio as gr

        seen = review.overview(self.dataset)
        people = list(seen.people)
        pairs = [f"{s['a']} + {s['b']}" for s in seen.suggestions]
        return (
            message,
            people_html(self.dataset, seen),
            findings_html(seen),
            gr.update(choices=people, value=None),
            gr.update(choices=people, value=None),
            gr.update(choices=[], value=[]),
            gr.update(choices=pairs, value=None),
        )

    def faces_of(self, person):
        import gradio as gr

        faces = [path for path, _ in _faces_by_person(self.dataset).get(person or "", [])]
        return gr.update(choices=faces, value=[])

    def act(self, action: str, people: list, faces: list, reason: str = "", user: str | None = None):
        """One decision, logged as the user logged in under --auth, else as the server's --who."""
        chosen = [p for p in people if p is not None]
        try:
            done = review.decide(self.dataset, action, chosen, faces or [], reason or "", user or self.who)
        except DynamicIDError as err:
            return self.current(f"**Not done:** {err}")
        return self.current(f"**{action}** logged and applied: {done['rows_changed']} manifest rows changed.")

    def on_click(self, action: str, decision):
        """A button's handler: `decision(first, second)` gives (people, faces, reason) from its two inputs;
        Gradio passes the request (so the logged-in user) to the parameter typed `gr.Request`."""
        import gradio as gr

        def handler(first, second, request):
            people, faces, reason = decision(first, second)
            return self.act(action, people, faces, reason, getattr(request, "username", None))

        handler.__annotations__ = {"request": gr.Request}  # a real type, not this module's postponed string
        return handler


def build_review_app(dataset: str, who: str = ""):
    """The page for `dataset`. Decisions are logged as the user logged in under --auth, else as `who`
    (default: the login name of the server's user)."""
    import gradio as gr

    actions = _Actions(dataset, who)
    with gr.Blocks(title="DynamicID review", analytics_enabled=False) as app:
        gr.Markdown(f"# Review: `{dataset}`\nDecisions go to `{review.LOG_FILE}` and every later prep run keeps them.")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column(scale=3):
                strips = gr.HTML(elem_id="people")
            with gr.Column(scale=2):
                person = gr.Radio(label="Person", elem_id="person")
                faces = gr.CheckboxGroup(label="Their faces (check some to move or reject)", elem_id="faces")
                other = gr.Radio(label="Another person (to merge into Person)", elem_id="other")
                merge = gr.Button("Merge the other person into Person", elem_id="merge")
                name = gr.Textbox(label="A name (new or existing)", elem_id="name")
                with gr.Row():
                    rename = gr.Button("Rename Person", elem_id="rename")
                    move = gr.Button("Move checked faces to the name", elem_id="move")
                reason = gr.Textbox(label="Reason (for a rejection)", elem_id="reason")
                with gr.Row():
                    reject_faces = gr.Button("Reject checked faces", elem_id="reject-faces")
                    reject_person = gr.Button("Reject Person", elem_id="reject-person")
                pair = gr.Radio(label="A suggested merge", elem_id="pair")
                with gr.Row():
                    same = gr.Button("Same person", elem_id="same")
                    different = gr.Button("Different people", elem_id="different")
        findings = gr.HTML(elem_id="findings")
        shown = [status, strips, findings, person, other, faces, pair]
        app.load(actions.current, None, shown)
        person.change(actions.faces_of, person, faces)
        click, both = actions.on_click, lambda text: (text or " + ").split(" + ", 1)
        merge.click(click("merge", lambda p, o: ([p, o], [], "")), [person, other], shown)
        rename.click(click("rename", lambda p, n: ([p, (n or "").strip()], [], "")), [person, name], shown)
        move.click(click("move", lambda f, n: ([(n or "").strip()], f, "")), [faces, name], shown)
        reject_faces.click(click("reject", lambda f, why: ([], f, why)), [faces, reason], shown)
        reject_person.click(click("reject", lambda p, why: ([], [p] if p else [], why)), [person, reason], shown)
        same.click(click("merge", lambda t, _: (both(t), [], "")), [pair, reason], shown)
        different.click(click("different", lambda t, _: (both(t), [], "")), [pair, reason], shown)
    return app


def serve_review(config, block: bool = True):
    """Starts the page for `config.dataset` (a `ReviewConfig`) on its host and port, under its --auth.
    Returns (app, url)."""
    from dynamicid.login import login_ok

    app = build_review_app(config.dataset, config.who)
    app.queue(default_concurrency_limit=1, max_size=64)  # one decision at a time, as the dataset's lock would
    _, url, _ = app.launch(
        server_name=config.host,
        server_port=config.port,
        prevent_thread_lock=not block,
        auth=(lambda user, password: login_ok(config.auth, user, password)) if config.auth else None,
        quiet=not block,
    )
    return app, url
