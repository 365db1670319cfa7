"""The authors' checkpoint layout at SD1.5 size, our safetensors, and the converter."""

import pytest
import torch

from dynamicid import cli
from dynamicid.models import IMR, FaceEncoder, KeyPointEncoder
from dynamicid.models.checkpoints import (
    AUTHORS_FILES,
    CheckpointError,
    load_authors,
    load_ours,
    save_ours,
    sd15_layout,
)
from dynamicid.models.saa import DynamicIDAttention


def random_state(module: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        for k, v in module.state_dict().items()
    }


@pytest.fixture(scope="module")
def layout():
    return sd15_layout()


@pytest.fixture(scope="module")
def authors_folder(tmp_path_factory, layout):
    """Files with exactly the authors' key names and SD1.5 shapes, written as they would be."""
    folder = tmp_path_factory.mktemp("authors")
    proj = random_state(FaceEncoder(), 1)
    saa = random_state(DynamicIDAttention(layout, rank=128), 2)
    torch.save({"proj_module": proj, "SAA_module": saa}, folder / AUTHORS_FILES["saa"])
    torch.save(random_state(IMR(), 3), folder / AUTHORS_FILES["imr"])
    torch.save(random_state(KeyPointEncoder(), 4), folder / AUTHORS_FILES["keypoint"])
    return folder, proj, saa


def test_the_authors_layout_has_32_processors_at_rank_128(authors_folder):
    _, proj, saa = authors_folder
    assert len({k.split(".")[0] for k in saa}) == 32
    assert saa["0.to_q_lora.down.weight"].shape == (128, 320)
    assert saa["1.to_k_ip.weight"].shape == (320, 768) and "0.to_k_ip.weight" not in saa
    assert set(k.split(".")[0] for k in proj) == {"proj", "norm", "perceiver_resampler"}


def test_authors_files_load_strictly_and_round_trip_losslessly(authors_folder, tmp_path, layout):
    folder, proj, saa = authors_folder
    weights = load_authors(str(folder), layout)
    for key, value in saa.items():
        assert torch.equal(weights.attention.state_dict()[key], value)
    save_ours(weights, str(tmp_path / "ours"))
    again = load_ours(str(tmp_path / "ours"), layout)
    for name in ("face_encoder", "attention", "imr", "keypoint_encoder"):
        before, after = getattr(weights, name).state_dict(), getattr(again, name).state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name


def test_converter_command_both_ways(authors_folder, tmp_path, capsys):
    folder, proj, saa = authors_folder
    assert cli.main(["convert-weights", str(folder), str(tmp_path / "ours")]) == 0
    assert cli.main(["convert-weights", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "authors"]) == 0
    blob = torch.load(tmp_path / "back" / "SAA.bin", weights_only=True)
    assert set(blob) == {"proj_module", "SAA_module"}
    assert all(torch.equal(blob["SAA_module"][k], v) for k, v in saa.items())
    assert all(torch.equal(blob["proj_module"][k], v) for k, v in proj.items())
    imr_before = torch.load(folder / "IMR.bin", weights_only=True)
    imr_after = torch.load(tmp_path / "back" / "IMR.bin", weights_only=True)
    assert all(torch.equal(imr_before[k], imr_after[k]) for k in imr_before)
    assert "wrote" in capsys.readouterr().out


def test_partial_and_wrong_files_name_their_keys(authors_folder, tmp_path, layout):
    folder, proj, saa = authors_folder
    broken = dict(saa)
    del broken["5.to_v_ip.weight"]
    broken["99.to_q_lora.down.weight"] = torch.zeros(128, 320)
    (tmp_path / "a").mkdir()
    torch.save({"proj_module": proj, "SAA_module": broken}, tmp_path / "a" / "SAA.bin")
    with pytest.raises(
        CheckpointError, match=r"missing keys: 5.to_v_ip.weight.*unexpected keys: 99.to_q_lora.down.weight"
    ):
        load_authors(str(tmp_path / "a"), layout)
    (tmp_path / "b").mkdir()
    imr = torch.load(folder / "IMR.bin", weights_only=True)
    imr["proj_out.weight"] = torch.zeros(768, 512)
    torch.save(imr, tmp_path / "b" / "IMR.bin")
    with pytest.raises(CheckpointError, match=r"wrong shapes: proj_out.weight \(768, 512\) != \(768, 1024\)"):
        load_authors(str(tmp_path / "b"), layout)
    (tmp_path / "c").mkdir()
    torch.save({"SAA_module": saa}, tmp_path / "c" / "SAA.bin")
    with pytest.raises(CheckpointError, match="exactly 'proj_module' and 'SAA_module'"):
        load_authors(str(tmp_path / "c"), layout)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "key_point_encoder.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a loadable weights file"):
        load_authors(str(tmp_path / "d"), layout)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds none of SAA.bin"):
        load_authors(str(tmp_path / "empty"), layout)


def test_pickles_that_run_code_are_refused(tmp_path, layout):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "x").mkdir()
    torch.save({"a": Payload()}, tmp_path / "x" / "IMR.bin")
    with pytest.raises(CheckpointError, match="not a loadable weights file"):
        load_authors(str(tmp_path / "x"), layout)


def test_cli_reports_checkpoint_errors(tmp_path, capsys):
    assert cli.main(["convert-weights", str(tmp_path), str(tmp_path / "out")]) == 1
    assert "holds none of" in capsys.readouterr().err
