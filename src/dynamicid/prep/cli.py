"""`dynamicid prep` and `dynamicid make-sample`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.errors import ConfigError
from dynamicid.options import Command, config_from, option
from dynamicid.prep.config import PrepConfig, ReviewConfig


def _verify_option(parser) -> None:
    parser.add_argument(
        "--verify",
        metavar="OUTPUT",
        default=None,
        help="check a finished OUTPUT instead of running: images/ must hold exactly the files the "
        "manifest lists; reports every difference and exits 1 if there is one",
    )


def run_prep(args) -> int:
    from dynamicid.prep.report import format_summary
    from dynamicid.prep.runner import run_prep as run

    if args.verify:
        from dynamicid.prep.verify import check_outputs

        extra = [value for value in (args.input, args.output) if value]
        if extra:
            raise ConfigError(
                f"--verify OUTPUT checks a finished output and takes no other folder; drop {' and '.join(extra)} "
                f"(dynamicid prep --verify {args.verify})"
            )

        check = check_outputs(args.verify)
        print(check.describe())
        return 0 if check.ok else 1
    if not args.input or not args.output:
        raise ConfigError("prep needs INPUT and OUTPUT folders (or --verify OUTPUT); see dynamicid prep --help")
    config = config_from(args, PrepConfig)
    result = run(config)
    print(format_summary(result.summary, config.output))
    return 0


@dataclass(frozen=True)
class MakeSampleConfig:
    folder: str = option(help="where to write the sample (created)", positional=True)


def run_make_sample(args) -> int:
    from dynamicid.prep.sample import make_sample

    config = config_from(args, MakeSampleConfig)
    expected = make_sample(config.folder)
    kept = sum(1 for status, _ in expected.values() if status == "ok")
    print(f"wrote {len(expected)} files to {config.folder}: {kept} should be kept, {len(expected) - kept} rejected")
    return 0


def run_review(args) -> int:
    from dynamicid.prep import review

    config = config_from(args, ReviewConfig)
    actions = [
        ("merge", list(config.merge or ()), []),
        ("rename", list(config.rename or ()), []),
        ("move", [config.into or ""], config.move),
        ("reject", [], config.reject),
        ("merge", list(config.same or ()), []),
        ("different", list(config.different or ()), []),
    ]
    chosen = [(action, people, faces) for action, people, faces in actions if faces or any(people)]
    if len(chosen) > 1:
        raise ConfigError(
            "one decision at a time: give one of --merge, --rename, --move, --reject, --same, --different"
        )
    finished = review.finish_interrupted(config.dataset)
    if finished:
        print(f"finished the review of {config.dataset} that was stopped while it was applied")
    if chosen and finished and review.is_last_decision(config.dataset, *chosen[0]):
        print(f"{chosen[0][0]}: already logged (the review that was stopped); now applied")
    elif chosen:
        action, people, faces = chosen[0]
        done = review.decide(config.dataset, action, people, faces, config.reason or "", config.who)
        print(
            f"{action}: logged in {config.dataset}/{review.LOG_FILE} and applied: {done['rows_changed']} manifest rows "
            f"changed; {done['people']} people"
        )
    if config.list_suggestions:
        print(format_overview(review.overview(config.dataset)))
    elif not chosen:
        return _serve_review_page(config)
    return 0


def _serve_review_page(config: ReviewConfig) -> int:
    import os
    import signal
    import threading

    from dynamicid.prep.review import ReviewError
    from dynamicid.serving.review_page import serve_review

    if not os.path.isfile(os.path.join(config.dataset, "manifest.parquet")):
        raise ReviewError(f"{config.dataset} is not a finished prep OUTPUT (no manifest.parquet): run dynamicid prep")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    app, url = serve_review(config, block=False)
    print(f"review page on {url} (ctrl-c to stop); decisions go to {config.dataset}/review_log.jsonl", flush=True)
    try:
        stopped.wait()
    finally:
        app.close()
    return 0


def format_overview(seen) -> str:
    lines = [f"people: {len(seen.people)}"]
    for person, splits in seen.people.items():
        lines.append(f"  {person:<24} " + ", ".join(f"{split} {count}" for split, count in sorted(splits.items())))
    lines.append(f"suggested merges (closest first): {len(seen.suggestions)}")
    lines += [f"  {s['a']} + {s['b']}  cosine {s['cosine']}, {s['links']} linking faces" for s in seen.suggestions]
    lines.append(f"suspected strangers (furthest first): {len(seen.strangers)}")
    lines += [f"  {s['path']}  under {s['person']}, distance {s['distance']}" for s in seen.strangers]
    lines.append(f"copies and photos held for review: {len(seen.copies)}")
    lines += [f"  {c['path']}  {c['reason']}" + (f" of {c['copy_of']}" if c["copy_of"] else "") for c in seen.copies]
    return "\n".join(lines)


COMMANDS = (
    Command(
        "prep",
        "prepare a face dataset with Spark (align, landmarks, embedding, prompts)",
        "Prepare a DynamicID training set. For every file under INPUT: decode and validate it, detect the face, find "
        "68 landmarks, align and crop to 512x512, compute the identity embedding, and write the face prompt and "
        "caption. Writes OUTPUT/images/<identity>/NAME.{jpg,png,txt,pt}, OUTPUT/manifest.parquet (one row per input "
        "file, kept or rejected, with the reason), summary.json and contact_sheet.png. A rerun skips what is "
        "already done.",
        PrepConfig,
        run_prep,
        extra=_verify_option,
    ),
    Command(
        "review",
        "a curator's corrections to a dataset's people: merge, rename, move, reject; kept for every later run",
        "Review the people prep found in DATASET. With no decision it serves the review page (on this machine only "
        "unless --host says otherwise; --auth for a login): each person as a strip of faces, the suggested merges "
        "closest first, the suspected strangers and the copies, and buttons for every decision; "
        "--list-suggestions prints the same lists instead. Each decision (page or --merge, "
        "--rename, --move with --into, --reject, --same, --different) is appended to DATASET/review_log.jsonl "
        "with who made it and when, faces named by content hash, and applied at once to the manifest, "
        "identities.parquet and the folders (identity_source = review). Every later prep run on DATASET honours "
        "the log: a moved face stays moved, a rejected one stays out, a pair answered different is not "
        "suggested again.",
        ReviewConfig,
        run_review,
    ),
    Command(
        "make-sample",
        "write a small demo input: a real face in several encodings, photos without faces, broken files",
        "Write a sample input folder that needs no download: kept faces and every kind of rejection.",
        MakeSampleConfig,
        run_make_sample,
    ),
)
