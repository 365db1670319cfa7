"""Both training stages on tiny models and a small prep output made from real photos."""

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dynamicid import cli
from dynamicid.prep import PrepConfig, run_prep
from dynamicid.training.config import AnchorConfig, ReconfigConfig
from dynamicid.training.data import TrainingDataError, load_faces
from dynamicid.training.stages import train_anchor, train_reconfig


@pytest.fixture(scope="module")
def dataset(spark, shared_faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_data")
    run_prep(PrepConfig(input=str(shared_faces / "identities"), output=str(out), progress=False), spark=spark)
    return str(out)


def anchor_config(dataset, tiny_models, output, **options):
    settings = (
        dict(
            data=dataset,
            base_model=tiny_models["sd15"],
            clip_image_encoder=tiny_models["clip-image"],
            output=str(output),
            steps=4,
            batch_size=2,
            resolution=64,  # latents of 8: the tiny UNet attends at 2x2
            lora_rank=4,
            checkpoint_every=2,
            progress=False,
            learning_rate=1e-3,
        )
        | options
    )
    return AnchorConfig(**settings)


def reconfig_config(dataset, tiny_models, output, **options):
    settings = (
        dict(
            data=dataset,
            base_model=tiny_models["sd15"],
            clip_image_encoder=tiny_models["clip-image"],
            output=str(output),
            weights=tiny_models["dynamicid"],
            steps=3,
            max_targets=3,
            resolution=64,
            checkpoint_every=0,
            progress=False,
            learning_rate=1e-3,
        )
        | options
    )
    return ReconfigConfig(**settings)


def frozen_state(frozen, skip_processors=True):
    state = {}
    for name, module in (
        ("unet", frozen.unet),
        ("vae", frozen.vae),
        ("text", frozen.text_encoder),
        ("clip", frozen.image_encoder),
    ):
        for key, value in module.state_dict().items():
            if skip_processors and ".processor." in key:
                continue
            state[f"{name}.{key}"] = value.detach().clone()
    return state


def test_anchor_trains_only_its_modules(dataset, tiny_models, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="dynamicid")
    snapshots = {}
    original_prepare = __import__("dynamicid.training.trainer", fromlist=["Trainer"]).Trainer.prepare

    def remember(self, trainable):
        snapshots["trainable"] = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
        return original_prepare(self, trainable)

    monkeypatch.setattr("dynamicid.training.trainer.Trainer.prepare", remember)
    from dynamicid.models.basemodel import load_base_model, load_clip_image_encoder

    base = load_base_model(tiny_models["sd15"])
    clip, _ = load_clip_image_encoder(tiny_models["clip-image"])
    before = {
        **{f"unet.{k}": v for k, v in base.unet.state_dict().items()},
        **{f"vae.{k}": v for k, v in base.vae.state_dict().items()},
        **{f"text.{k}": v for k, v in base.text_encoder.state_dict().items()},
        **{f"clip.{k}": v for k, v in clip.state_dict().items()},
    }
    result = train_anchor(anchor_config(dataset, tiny_models, tmp_path))
    losses = [r["loss"] for r in result["history"]]
    assert len(losses) == 4 and all(np.isfinite(losses))
    after = frozen_state(result["frozen"])
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen tensor changed"
    trained = result["modules"].state_dict()
    unchanged = [k for k, v in snapshots["trainable"].items() if torch.equal(v, trained[k].cpu())]
    assert unchanged == []
    assert "1 of 6 identities have one photo" in caplog.text  # lin_manuel_miranda, logged
    for name in (
        "weights/dynamicid.json",
        "weights/saa.safetensors",
        "weights-authors/SAA.bin",
        "loss.png",
        "losses.csv",
        "train_config.json",
    ):
        assert (tmp_path / name).exists(), name
    config = (tmp_path / "train_config.json").read_text()
    assert '"gate_during_training": true' in config and '"gradients_through_gate": true' in config


def test_resume_reproduces_the_uninterrupted_losses(dataset, tiny_models, tmp_path):
    whole = train_anchor(anchor_config(dataset, tiny_models, tmp_path / "whole", steps=6, checkpoint_every=3))[
        "history"
    ]
    train_anchor(anchor_config(dataset, tiny_models, tmp_path / "split", steps=3, checkpoint_every=3))
    resumed = train_anchor(anchor_config(dataset, tiny_models, tmp_path / "split", steps=6, checkpoint_every=3))[
        "history"
    ]
    assert [r["step"] for r in resumed] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in whole], rtol=1e-5, atol=1e-7)


def test_a_damaged_latest_checkpoint_is_skipped_for_the_newest_intact_one(dataset, tiny_models, tmp_path, caplog):
    """A cut model.safetensors or a garbage optimizer.bin: the run resumes from the checkpoint before, says
    which was skipped and why, and still reproduces the uninterrupted losses."""
    import glob
    import os

    whole = train_anchor(anchor_config(dataset, tiny_models, tmp_path / "whole", steps=6, checkpoint_every=2))[
        "history"
    ]
    split = tmp_path / "split"
    train_anchor(anchor_config(dataset, tiny_models, split, steps=4, checkpoint_every=2))
    latest = sorted(glob.glob(str(split / "checkpoints" / "step-*")))[-1]
    model = glob.glob(os.path.join(latest, "*.safetensors"))[0]
    with open(model, "r+b") as handle:
        handle.truncate(os.path.getsize(model) // 2)
    resumed = train_anchor(anchor_config(dataset, tiny_models, split, steps=6, checkpoint_every=2))["history"]
    assert f"skipping checkpoint {latest}" in caplog.text and "cannot be loaded" in caplog.text
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in whole], rtol=1e-5, atol=1e-7)
    for folder in glob.glob(str(split / "checkpoints" / "step-*")):  # now every one is damaged
        with open(glob.glob(os.path.join(folder, "optimizer*.bin"))[0], "wb") as handle:
            handle.write(b"garbage")
    with pytest.raises(TrainingDataError, match="no checkpoint in .* can be loaded .*resume to false"):
        train_anchor(anchor_config(dataset, tiny_models, split, steps=8, checkpoint_every=2))


def test_damaged_face_files_are_left_out_before_the_first_step_with_a_list(dataset, tmp_path, caplog):
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    faces = load_faces(str(damaged))
    cut, garbage, narrow = faces[0], faces[1], faces[2]
    data = open(cut.jpg, "rb").read()
    open(cut.jpg, "wb").write(data[: len(data) // 2])
    open(garbage.pt, "wb").write(b"not a tensor file")
    torch.save({"embedding": torch.zeros(64), "dim": 64}, narrow.pt)
    kept = load_faces(str(damaged))
    assert len(kept) == len(faces) - 3 and {f.name for f in kept} == {f.name for f in faces[3:]}
    assert "leaving out 3 of" in caplog.text
    for path in (cut.jpg, garbage.pt, narrow.pt):
        assert path in caplog.text
    assert "should be 128 numbers" in caplog.text


def test_the_anchor_loss_falls_on_a_fixed_set(dataset, tiny_models, tmp_path):
    # A tiny UNet (attending at its lowest level only) and rank-4 LoRA at a high rate: the noise-prediction
    # loss drops within a few dozen steps (by 6.5-11% at 60 steps over seeds 0-4, measured; seed 3 is the least).
    history = train_anchor(
        anchor_config(
            dataset, tiny_models, tmp_path, steps=60, batch_size=4, checkpoint_every=0, learning_rate=1e-2, seed=3
        )
    )["history"]
    losses = np.array([r["loss"] for r in history])
    assert losses[-8:].mean() < 0.96 * losses[:8].mean(), losses


def test_reconfig_trains_imr_and_keypoint_encoder_only(dataset, tiny_models, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dynamicid")
    result = train_reconfig(reconfig_config(dataset, tiny_models, tmp_path))
    history = result["history"]
    assert all(np.isfinite([r["loss"], r["dfm"], r["ldc"]]).all() for r in history)
    assert "1 identities have one photo and are left out" in caplog.text
    from dynamicid.models.checkpoints import load_ours
    from dynamicid.models.saa import processor_layout

    start = load_ours(tiny_models["dynamicid"], processor_layout(result["frozen"].unet))
    final = load_ours(str(tmp_path / "weights"), processor_layout(result["frozen"].unet))
    for name in ("face_encoder", "attention"):
        a, b = getattr(start, name).state_dict(), getattr(final, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for name in ("imr", "keypoint_encoder"):
        a, b = getattr(start, name).state_dict(), getattr(final, name).state_dict()
        changed = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
        assert changed, name
    # Convolution biases that feed BatchNorm have no gradient in exact arithmetic: kept as they were.
    kept = [k for k in start.keypoint_encoder.state_dict() if k.endswith("conv_block.0.bias")]
    a, b = start.keypoint_encoder.state_dict(), final.keypoint_encoder.state_dict()
    assert len(kept) > 5 and all(torch.equal(a[k], b[k]) for k in kept)
    assert (tmp_path / "weights-authors" / "IMR.bin").exists()

    # init_weights (what `dynamicid run` gives a rerun on new data): IMR and the KeyPointEncoder start from a
    # finished reconfig's, not from the stage-1 file's.
    again = reconfig_config(
        dataset, tiny_models, tmp_path / "again", init_weights=str(tmp_path / "weights"), steps=1, learning_rate=1e-12
    )
    got, was, of_stage1 = (m.state_dict() for m in (train_reconfig(again)["modules"].imr, final.imr, start.imr))
    floats = [k for k in got if got[k].is_floating_point()]
    assert all(torch.allclose(got[k], was[k], atol=1e-6) for k in floats)
    assert any(not torch.allclose(got[k], of_stage1[k], atol=1e-6) for k in floats)


def test_the_reconfig_loss_falls(dataset, tiny_models, tmp_path):
    history = train_reconfig(
        reconfig_config(dataset, tiny_models, tmp_path, steps=30, ldc_weight=0.0, learning_rate=3e-3)
    )["history"]
    dfm = np.array([r["dfm"] for r in history])
    assert dfm[-5:].mean() < 0.5 * dfm[:5].mean(), dfm


def test_bad_data_is_rejected_with_a_clear_message(dataset, tiny_models, tmp_path, spark, sample):
    folder, _ = sample
    broken_only = tmp_path / "broken_only"
    shutil.copytree(folder / "broken", broken_only / "in" / "broken")
    run_prep(PrepConfig(input=str(broken_only / "in"), output=str(broken_only / "out"), progress=False), spark=spark)
    with pytest.raises(TrainingDataError, match="lists no kept faces"):
        load_faces(str(broken_only / "out"))
    with pytest.raises(TrainingDataError, match="no manifest.parquet"):
        load_faces(str(tmp_path))

    single = tmp_path / "single"
    shutil.copytree(dataset, single)
    manifest = pd.read_parquet(single / "manifest.parquet")
    manifest.drop_duplicates("identity").to_parquet(single / "manifest.parquet")
    with pytest.raises(TrainingDataError, match="at least two photos"):
        train_reconfig(reconfig_config(str(single), tiny_models, tmp_path / "r"))

    mixed = tmp_path / "mixed"
    shutil.copytree(dataset, mixed)
    manifest = pd.read_parquet(mixed / "manifest.parquet")
    manifest.loc[manifest.index[0], "embedding_dim"] = 512
    manifest.to_parquet(mixed / "manifest.parquet")
    with pytest.raises(TrainingDataError, match=r"mixes embeddings of dimensions \[128, 512\]"):
        load_faces(str(mixed))


def test_cli_make_tiny_models_and_train(dataset, tmp_path, capsys):
    assert cli.main(["make-tiny-models", str(tmp_path / "tiny")]) == 0
    for part in ("sd15/unet", "clip-image/config.json", "dynamicid/dynamicid.json"):
        assert (tmp_path / "tiny" / part).exists()
    code = cli.main(
        [
            "train",
            "anchor",
            dataset,
            str(tmp_path / "run"),
            "--base-model",
            str(tmp_path / "tiny/sd15"),
            "--clip-image-encoder",
            str(tmp_path / "tiny/clip-image"),
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--resolution",
            "32",
            "--lora-rank",
            "4",
            "--sample-every",
            "2",
            "--sample-steps",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "train anchor: 2 steps" in out and (tmp_path / "run" / "samples" / "step-0000002.png").exists()
    assert (
        cli.main(
            [
                "train",
                "anchor",
                str(tmp_path),
                str(tmp_path / "run2"),
                "--base-model",
                str(tmp_path / "tiny/sd15"),
                "--clip-image-encoder",
                str(tmp_path / "tiny/clip-image"),
            ]
        )
        == 1
    )
    assert "no manifest.parquet" in capsys.readouterr().err


# -- the data path (issue 18): read-ahead workers and the CLIP feature cache ------------------------------


def test_read_ahead_gives_the_same_micro_batches_in_any_order(dataset):
    from dynamicid.training import data as td

    faces = load_faces(dataset)
    batches = td.AnchorBatches(
        td.AnchorSampler(faces), seed=3, batch_size=2, resolution=32, id_dim=128, drops=(0.3, 0.3, 0.2)
    )
    direct = [batches[k] for k in range(6)]
    reader = td.ReadAhead(batches, workers=2)
    ahead = [reader[k] for k in range(4)] + [reader[1], reader[2]]  # then as a resumed run would ask
    reader.close()
    for got, want in zip(ahead, direct[:4] + direct[1:3]):
        assert got["captions"] == want["captions"]
        torch.testing.assert_close(got["pixels"], want["pixels"])
        torch.testing.assert_close(got["embeddings"], want["embeddings"])
        assert got["drop_image"].tolist() == want["drop_image"].tolist()
    assert any(d["drop_image"].any() for d in direct) and any("" in d["captions"] for d in direct)


def test_cached_clip_features_train_as_the_encoder_in_the_step_does(dataset, tiny_models, tmp_path):
    cached = train_anchor(anchor_config(dataset, tiny_models, tmp_path / "cached", steps=3, checkpoint_every=0))
    files = sorted((tmp_path / "cached" / "clip-cache").rglob("*.safetensors"))
    assert len(files) == len(load_faces(dataset))
    stamps = [f.stat().st_mtime_ns for f in files]
    live = train_anchor(
        anchor_config(
            dataset, tiny_models, tmp_path / "live", steps=3, checkpoint_every=0, cache_clip=False, data_workers=0
        )
    )
    assert not (tmp_path / "live" / "clip-cache").exists()
    np.testing.assert_allclose([h["loss"] for h in cached["history"]], [h["loss"] for h in live["history"]], rtol=1e-4)
    # a second run with the same encoder reuses the cache instead of rewriting it
    train_anchor(anchor_config(dataset, tiny_models, tmp_path / "cached", steps=4, checkpoint_every=0))
    assert [f.stat().st_mtime_ns for f in files] == stamps


# -- several processes (issue 25): DistributedDataParallel through accelerate, on CPU with gloo ---------------


def _launch(processes: int, stage: str, dataset, tiny_models, output, *options: str) -> dict:
    """`torchrun` as the README's CPU form; returns train_config.json. One thread per process, so the
    CPU time of N processes compares with one's."""
    import json
    import os
    import subprocess
    import sys

    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    models = ["--base-model", tiny_models["sd15"], "--clip-image-encoder", tiny_models["clip-image"]]
    # The default learning rate: AdamW steps every weight by about the rate, even one whose gradient is
    # round-off, so processes that sum in another order differ by up to ~1e-6 here, ~1e-5 at 1e-3.
    common = ["--resolution", "64", "--no-progress", "--checkpoint-every", "2"]
    argv = [*launcher, "-m", "dynamicid.cli", "-q", "train", stage, dataset, str(output), *models, *common, *options]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((output / "train_config.json").read_text())


def _weights(output) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted((output / "weights").glob("*.safetensors")):
        tensors |= {f"{path.name}:{k}": v for k, v in load_file(path).items()}
    return tensors


def _assert_same_weights(got, want):
    a, b = _weights(got), _weights(want)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


@pytest.mark.slow
def test_two_processes_train_anchor_as_one_process_with_their_global_batch(dataset, tiny_models, tmp_path):
    # Batch 8 at 192 px, so that the step's work, not its fixed costs, dominates the CPU time compared below.
    anchor = ["--lora-rank", "4", "--data-workers", "0", "--batch-size", "8", "--resolution", "192"]
    one = _launch(1, "anchor", dataset, tiny_models, tmp_path / "one", *anchor, "--steps", "3")
    two = _launch(2, "anchor", dataset, tiny_models, tmp_path / "two", *anchor, "--steps", "3")
    assert (one["processes"], two["processes"]) == (1, 2)
    # Both ranks hold the same weights, and they equal one process's at the same global batch.
    assert len(set(two["weights_digests"])) == 1
    _assert_same_weights(tmp_path / "two", tmp_path / "one")
    # The two processes share the work: each puts half of every global batch of 8 through the model. (Counted,
    # not timed: gloo's waits spin, so CPU time says little when other work shares the cores.)
    assert one["processes_faces"] == [24] and two["processes_faces"] == [12, 12], (one, two)
    # A resumed two-process run continues exactly: the run's step-2 checkpoint alone, then on to step 3.
    shutil.copytree(tmp_path / "two", tmp_path / "resumed")
    for later in ("checkpoints/step-0000003", "weights", "weights-authors"):
        shutil.rmtree(tmp_path / "resumed" / later)
    kept = tmp_path / "resumed" / "checkpoints" / "step-0000002" / "model.safetensors"
    stamp = kept.stat().st_mtime_ns
    _launch(2, "anchor", dataset, tiny_models, tmp_path / "resumed", *anchor, "--steps", "3")
    assert kept.stat().st_mtime_ns == stamp  # resumed from step 2 (a run from step 0 would rewrite it)
    _assert_same_weights(tmp_path / "resumed", tmp_path / "two")


@pytest.mark.slow
def test_two_processes_train_reconfig_as_one_process_with_their_global_batch(dataset, tiny_models, tmp_path):
    reconfig = ["--weights", tiny_models["dynamicid"], "--max-targets", "3", "--batch-size", "2", "--steps", "3"]
    one = _launch(1, "reconfig", dataset, tiny_models, tmp_path / "one", *reconfig)
    two = _launch(2, "reconfig", dataset, tiny_models, tmp_path / "two", *reconfig)
    assert len(set(two["weights_digests"])) == 1 and two["processes"] == 2
    assert two["processes"] == 2 and one["processes"] == 1
    assert one["processes_faces"] == [6] and two["processes_faces"] == [3, 3]  # batch 2 x 3 steps, shared
    _assert_same_weights(tmp_path / "two", tmp_path / "one")
    losses = [pd.read_csv(tmp_path / name / "losses.csv")["loss"].to_numpy() for name in ("one", "two")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_a_batch_that_does_not_split_across_processes_or_a_launch_accelerate_cannot_see_is_refused(monkeypatch):
    from dynamicid.errors import ConfigError
    from dynamicid.training.trainer import _check_launch

    with pytest.raises(ConfigError, match="multiple of 2"):
        _check_launch(2, 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=1"):
        _check_launch(1, 4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    _check_launch(1, 3)


# -- nothing half-written, and a stop that keeps the work (issue 25 §5) -------------------------------------


def test_ctrl_c_stops_at_the_next_micro_batch_saves_the_last_step_and_a_rerun_continues_exactly(
    dataset, tiny_models, tmp_path, monkeypatch
):
    import os
    import signal

    from dynamicid.training import stages

    whole = train_anchor(anchor_config(dataset, tiny_models, tmp_path / "whole", steps=4, checkpoint_every=0))
    real_loss = stages._anchor_loss

    def interrupted_loss(*args):
        loss_of = real_loss(*args)

        def with_ctrl_c(micro):
            if micro == 2:
                os.kill(os.getpid(), signal.SIGINT)  # arrives inside the step, as a Ctrl-C would
            return loss_of(micro)

        return with_ctrl_c

    monkeypatch.setattr(stages, "_anchor_loss", interrupted_loss)
    handler = signal.getsignal(signal.SIGINT)  # Spark's, in this test session
    with pytest.raises(KeyboardInterrupt):
        train_anchor(anchor_config(dataset, tiny_models, tmp_path / "split", steps=4, checkpoint_every=0))
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["step-0000003"]
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is put back
    monkeypatch.setattr(stages, "_anchor_loss", real_loss)
    resumed = train_anchor(anchor_config(dataset, tiny_models, tmp_path / "split", steps=4, checkpoint_every=0))
    assert [r["step"] for r in resumed["history"]] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [r["loss"] for r in resumed["history"]], [r["loss"] for r in whole["history"]], rtol=1e-5, atol=1e-7
    )
    _assert_same_weights(tmp_path / "split", tmp_path / "whole")


def test_final_weights_are_written_whole_or_not_at_all(tiny_models, tmp_path, monkeypatch):
    from dynamicid import atomic
    from dynamicid.models.checkpoints import load_ours, save_ours, unet_config_layout

    layout = unet_config_layout(f"{tiny_models['sd15']}/unet/config.json")
    weights = load_ours(tiny_models["dynamicid"], layout)
    save_ours(weights, str(tmp_path / "w"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "w").iterdir()}
    for module in (weights.face_encoder, weights.imr):
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(1.0)
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        save_ours(weights, str(tmp_path / "w"))
    after = {p.name: p.read_bytes() for p in (tmp_path / "w").iterdir()}
    assert after.keys() == before.keys()  # no temporary left behind
    changed = [name for name in after if after[name] != before[name]]
    assert changed == ["face_encoder.safetensors"]  # the first file is whole and new; the rest whole and old
    monkeypatch.undo()
    load_ours(str(tmp_path / "w"), layout)


# -- weights that know their face stack (issue 25 §3) ----------------------------------------------------------


def test_prep_records_its_face_analysis_and_training_copies_it_into_the_weights(dataset, tiny_models, tmp_path):
    import json

    record = json.loads((Path(dataset) / "face_analysis.json").read_text())["face_analysis"]
    assert record["embedder"] == "dlib-resnet" and record["detector"] == "dlib-hog"
    train_anchor(anchor_config(dataset, tiny_models, tmp_path / "anchor", steps=1, checkpoint_every=0))
    saved = json.loads((tmp_path / "anchor" / "weights" / "dynamicid.json").read_text())
    assert saved["face_analysis"] == record
    train_reconfig(
        reconfig_config(dataset, tiny_models, tmp_path / "re", steps=1, weights=str(tmp_path / "anchor" / "weights"))
    )
    assert json.loads((tmp_path / "re" / "weights" / "dynamicid.json").read_text())["face_analysis"] == record


def test_reconfig_refuses_data_analysed_with_another_embedder_than_stage_one(dataset, tiny_models, tmp_path):
    import json

    from dynamicid.models.checkpoints import load_ours, save_ours, unet_config_layout

    weights = load_ours(tiny_models["dynamicid"], unet_config_layout(f"{tiny_models['sd15']}/unet/config.json"))
    weights.face_analysis = {"embedder": "insightface", "embedder_model": "buffalo_l"}
    save_ours(weights, str(tmp_path / "arcface-weights"))
    assert json.loads((tmp_path / "arcface-weights" / "dynamicid.json").read_text())["face_analysis"]["embedder"]
    with pytest.raises(TrainingDataError, match="trained on insightface embeddings but .* holds dlib-resnet"):
        train_reconfig(
            reconfig_config(dataset, tiny_models, tmp_path / "re", weights=str(tmp_path / "arcface-weights"))
        )


# -- training integrity (issue 28) ------------------------------------------------------------------------


def _finite_everywhere(output) -> bool:
    from safetensors.torch import load_file

    files = list(Path(output).glob("checkpoints/*/*.safetensors")) + list(Path(output).glob("weights/*.safetensors"))
    return all(v.isfinite().all() for f in files for v in load_file(str(f)).values() if v.is_floating_point())


def test_a_learning_rate_that_breaks_the_weights_stops_the_run_and_saves_nothing_of_it(
    dataset, tiny_models, tmp_path, caplog, monkeypatch
):
    from dynamicid.errors import TrainingError
    from dynamicid.training import stages

    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    train_anchor(anchor_config(dataset, tiny_models, out, steps=2, checkpoint_every=2))
    with pytest.raises(TrainingError, match=r"made \d+ weights NaN or inf .*learning_rate 1000 is too high") as err:
        train_anchor(anchor_config(dataset, tiny_models, out, steps=6, checkpoint_every=1, learning_rate=1000.0))
    failed = int(re.search(r"step (\d+) made", str(err.value)).group(1))
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved[-1] == f"step-{failed - 1:07d}" and f"continues from {saved[-1]}" in str(err.value)
    assert f"remove {', '.join(saved[1:])} (saved at this rate) to continue from step 2" in str(err.value)
    assert _finite_everywhere(out)
    for made_at_100 in saved[1:]:
        shutil.rmtree(out / "checkpoints" / made_at_100)
    real_loss = stages._anchor_loss

    def loss_turning_nan(*args):
        loss_of = real_loss(*args)
        return lambda micro: (loss_of(micro)[0] * (float("nan") if micro == 1 else 1.0), {})

    monkeypatch.setattr(stages, "_anchor_loss", loss_turning_nan)
    with pytest.raises(TrainingError, match="the loss became nan at step 2, .*from the start"):
        train_anchor(anchor_config(dataset, tiny_models, tmp_path / "nan", steps=2, checkpoint_every=0))
    assert not (tmp_path / "nan" / "weights").exists() and not (tmp_path / "nan" / "checkpoints").exists()
    monkeypatch.setattr(stages, "_anchor_loss", real_loss)

    resumed = train_anchor(anchor_config(dataset, tiny_models, out, steps=4, learning_rate=5e-4))
    assert "resumed from" in caplog.text and "learning_rate changed from 0.001 to 0.0005" in caplog.text
    assert [r["step"] for r in resumed["history"]] == [1, 2, 3, 4] and _finite_everywhere(out)


def test_a_checkpoint_with_nan_weights_is_skipped_on_resume(dataset, tiny_models, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    train_anchor(anchor_config(dataset, tiny_models, out, steps=4, checkpoint_every=2))
    latest = out / "checkpoints" / "step-0000004" / "model.safetensors"
    tensors = load_file(str(latest))
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))  # as runs before the check could save
    save_file(tensors, str(latest))
    resumed = train_anchor(anchor_config(dataset, tiny_models, out, steps=5, checkpoint_every=2))
    assert "skipping checkpoint" in caplog.text and "hold NaN or inf" in caplog.text
    assert "resumed from" in caplog.text and "step-0000002 at step 2" in caplog.text
    assert len(resumed["history"]) == 5 and _finite_everywhere(out / "weights")


def test_a_changed_learning_rate_applies_on_resume(dataset, tiny_models, tmp_path):
    train_anchor(anchor_config(dataset, tiny_models, tmp_path / "a", steps=2))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    train_anchor(anchor_config(dataset, tiny_models, tmp_path / "a", steps=4))
    train_anchor(anchor_config(dataset, tiny_models, tmp_path / "b", steps=4, learning_rate=1e-2))
    changed = [not torch.equal(w, _weights(tmp_path / "b")[k]) for k, w in _weights(tmp_path / "a").items()]
    assert any(changed)  # the optimizer loaded with the checkpoint took the new rate
    settings = json.loads((tmp_path / "b" / "train_config.json").read_text())
    assert settings["learning_rate"] == 1e-2


def test_resume_refuses_other_data_model_settings_or_fewer_steps_and_no_resume_starts_over(
    dataset, tiny_models, tmp_path
):
    out = tmp_path / "run"
    train_anchor(anchor_config(dataset, tiny_models, out, steps=4))
    with pytest.raises(TrainingDataError, match=r"other settings .*lora_rank 4 -> 8.*--no-resume"):
        train_anchor(anchor_config(dataset, tiny_models, out, steps=6, lora_rank=8))
    with pytest.raises(TrainingDataError, match=r"already trained 4 steps, more than the 3 asked"):
        train_anchor(anchor_config(dataset, tiny_models, out, steps=3))
    other = tmp_path / "other_data"  # the same output, less one person's faces (as a re-prep without them)
    shutil.copytree(dataset, other)
    manifest = pd.read_parquet(other / "manifest.parquet")
    manifest[manifest.identity != "obama"].to_parquet(other / "manifest.parquet")
    with pytest.raises(TrainingDataError, match=r"data_digest .* -> .*data_faces \d+ -> \d+"):
        train_anchor(anchor_config(str(tmp_path / "other_data"), tiny_models, out, steps=6))
    shutil.copytree(dataset, tmp_path / "moved")  # the same data elsewhere is the same run
    assert len(train_anchor(anchor_config(str(tmp_path / "moved"), tiny_models, out, steps=5))["history"]) == 5
    again = train_anchor(anchor_config(dataset, tiny_models, out, steps=2, lora_rank=8, resume=False))
    assert [r["step"] for r in again["history"]] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]


def test_reconfig_refuses_to_resume_on_other_stage_one_weights(dataset, tiny_models, tmp_path):
    from dynamicid.models.checkpoints import load_ours, save_ours, unet_config_layout

    weights = load_ours(tiny_models["dynamicid"], unet_config_layout(f"{tiny_models['sd15']}/unet/config.json"))
    with torch.no_grad():
        next(weights.face_encoder.parameters()).add_(1.0)
    save_ours(weights, str(tmp_path / "other-stage1"))
    train_reconfig(reconfig_config(dataset, tiny_models, tmp_path / "re", steps=1))
    with pytest.raises(TrainingDataError, match="stage1_weights_digest"):
        train_reconfig(
            reconfig_config(dataset, tiny_models, tmp_path / "re", steps=2, weights=str(tmp_path / "other-stage1"))
        )
