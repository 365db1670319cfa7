"""SAA against a reference written from method spec section 3 with the authors' conventions.

The reference is deliberately plain: Python loops over persons and grid cells, boxes turned into cells
with Python's int() as the authors' code does, and every formula written out. Our processor is
vectorised and compiled; the two must agree to 1e-5 in fp32.

Conventions (the authors' attention.py and pipeline.py, ByteCat-bot/DynamicID):
  * box [y0, x0, y1, x1] covers rows int(y0 h) .. int(y1 h) - 1 and columns int(x0 w) .. int(x1 w) - 1;
  * without boxes, N >= 1 persons get strips [0, i/N, 1, (i+1)/N]; a lone person's strip is the grid;
  * routing: inside person i's box the other persons' logits are -inf;
  * layout: w / (s+1) outside the boxes and w (s+1) + s inside, for steps before infer_end;
  * gate off: IP-Adapter style, weight 1 everywhere, no layout, no routing.
Our one deviation, overlapping boxes (a query sees every person whose box holds it, boost once), is
also what this reference does; the authors' code gives NaN there.
"""

import math

import pytest
import torch
from tiny import CROSS_DIM, tiny_unet

from dynamicid.models.saa import SAAProcessor, SAASettings, box_masks

TOKENS = 4


def cells_of_box(box, height, width):
    """The authors' rule, written out: the set of (row, col) a box covers."""
    y0, x0, y1, x1 = box
    return {(r, c) for r in range(int(y0 * height), int(y1 * height)) for c in range(int(x0 * width), int(x1 * width))}


def reference_saa(attn, processor, hidden, text, ids, persons, boxes, gate, strength, id_scale, grid, threshold=0.3):
    """One cross-attention layer of SAA, from the formulas. `boxes`: list of [y0, x0, y1, x1] or None."""
    height, width = grid
    batch, queries, _ = hidden.shape
    heads = attn.heads
    query = attn.to_q(hidden) + processor.to_q_lora(hidden)
    key = attn.to_k(text) + processor.to_k_lora(text)
    value = attn.to_v(text) + processor.to_v_lora(text)
    d = query.shape[-1] // heads

    def split(x):
        return x.view(batch, -1, heads, d).transpose(1, 2)

    q, k, v = split(query), split(key), split(value)
    text_out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
    k_ip, v_ip = split(processor.to_k_ip(ids)), split(processor.to_v_ip(ids))
    logits = (q * d**-0.25) @ (k_ip * d**-0.25).transpose(-1, -2)  # (B, heads, Nq, N*k)

    w = torch.ones(batch, queries)
    routed = logits.clone()
    if gate:
        if boxes is None:
            boxes = [[0.0, i / persons, 1.0, (i + 1) / persons] for i in range(persons)]
        owners = [[] for _ in range(queries)]  # which persons' boxes hold each query cell
        for person, box in enumerate(boxes):
            for r, c in cells_of_box(box, height, width):
                owners[r * width + c].append(person)
        for cell, held_by in enumerate(owners):
            if held_by:
                for person in range(persons):
                    if person not in held_by:
                        routed[:, :, cell, person * TOKENS : (person + 1) * TOKENS] = float("-inf")
        activation = logits.sum(dim=(1, 3))
        for b in range(batch):
            low, high = activation[b].min(), activation[b].max()
            w[b] = (activation[b] - low) / (high - low)
        w = torch.where(w < threshold, torch.zeros_like(w), w)
        w = w / (strength + 1)
        for cell, held_by in enumerate(owners):
            if held_by:
                w[:, cell] = w[:, cell] * (strength + 1) + strength
    id_out = torch.softmax(routed, dim=-1) @ v_ip
    merged = text_out.transpose(1, 2).reshape(batch, queries, -1) + id_scale * w[..., None] * id_out.transpose(
        1, 2
    ).reshape(batch, queries, -1)
    return attn.to_out[0](merged) + processor.to_out_lora(merged)


def _layer_and_processor(seed=0):
    unet = tiny_unet()
    attn = unet.down_blocks[-1].attentions[0].transformer_blocks[0].attn2  # the tiny UNet attends at its lowest level
    torch.manual_seed(seed)
    processor = SAAProcessor(32, 32, CROSS_DIM, 32, rank=4)
    with torch.no_grad():
        for lora in (processor.to_q_lora, processor.to_k_lora, processor.to_v_lora, processor.to_out_lora):
            lora.up.weight.normal_(std=0.05)
    return attn, processor


# Boxes whose edges fall on cell edges of a 16-wide grid, and boxes whose edges do not.
ON_EDGES = [[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75]]
OFF_EDGES = [[0.1, 0.1, 0.9, 0.45], [0.1, 0.55, 0.9, 0.9], [0.33, 0.07, 0.71, 0.3]]
CASES = [
    # persons, boxes, gate, step, batch (2 = a CFG pair), grid
    (persons, boxes, gate, step, batch, grid)
    for persons in (1, 2, 3)
    for boxes in ("none", "on", "off")
    for gate in (True, False)
    for step in (0, 12)
    for batch, grid in ((2, (16, 16)), (1, (8, 12)))
]


@pytest.mark.parametrize("persons,boxes,gate,step,batch,grid", CASES)
def test_processor_equals_the_reference(persons, boxes, gate, step, batch, grid):
    attn, processor = _layer_and_processor(seed=persons)
    g = torch.Generator().manual_seed(step + persons)
    hidden = torch.randn(batch, grid[0] * grid[1], 32, generator=g)
    text = torch.randn(batch, 77, CROSS_DIM, generator=g)
    ids = torch.randn(batch, TOKENS * persons, CROSS_DIM, generator=g)
    chosen = {"none": None, "on": ON_EDGES[:persons], "off": OFF_EDGES[:persons]}[boxes]
    infer_scale, infer_end = 2.0, 12
    settings = SAASettings(
        num_persons=persons,
        tokens_per_person=TOKENS,
        id_scale=0.8,
        boxes=chosen,
        gate=gate,
        step=torch.tensor(step),
        infer_scale=infer_scale,
        infer_end=infer_end,
        latent_size=grid,
    )
    with torch.no_grad():
        ours = processor(attn, hidden, torch.cat([text, ids], 1), dynamicid=settings)
        strength = infer_scale if step < infer_end else 0.0
        expected = reference_saa(attn, processor, hidden, text, ids, persons, chosen, gate, strength, 0.8, grid)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", [64, 32, 16, 8])
def test_box_cells_follow_the_authors_truncation(side):
    boxes = torch.tensor([[[0.1, 0.1, 0.9, 0.45], [0.1, 0.55, 0.9, 0.9]]], dtype=torch.float64)
    inside = box_masks(boxes, side, side)
    for person, box in enumerate(boxes[0].tolist()):
        # rows int(y0 h) .. int(y1 h) - 1, columns int(x0 w) .. int(x1 w) - 1
        expected = {
            (r, c)
            for r in range(int(0.1 * side), int(0.9 * side))
            for c in range(int(box[1] * side), int(box[3] * side))
        }
        got = {(i // side, i % side) for i in inside[0, person].nonzero().flatten().tolist()}
        assert got == expected, (side, person)


def test_edges_truncate_as_python_floats_do():
    # 0.7 * 10 is 7.000000000000001 in float64 but 6.99999988 in float32: the authors' Python gives row 7 as the end.
    inside = box_masks(torch.tensor([[[0.0, 0.0, 0.7, 1.0]]], dtype=torch.float64), 10, 1)
    assert inside[0, 0].tolist() == [True] * 7 + [False] * 3
    through_settings = SAASettings(num_persons=1, boxes=[[0.0, 0.0, 0.7, 1.0]]).resolved_boxes()
    assert box_masks(through_settings[None], 10, 1)[0, 0].sum() == 7


def _gate_of(processor, attn, hidden, context, **kwargs):
    maps = []
    with torch.no_grad():
        out = processor(attn, hidden, context, dynamicid=SAASettings(gate_maps=maps, **kwargs))
    return out, maps[0]["gate"]


def test_a_lone_person_gets_the_whole_grid_as_strip():
    attn, processor = _layer_and_processor()
    hidden, context = torch.randn(1, 256, 32), torch.randn(1, 77 + TOKENS, CROSS_DIM)
    _, plain = _gate_of(processor, attn, hidden, context, num_persons=1, infer_scale=0.0, infer_end=0)
    _, boosted = _gate_of(processor, attn, hidden, context, num_persons=1, infer_scale=2.0, infer_end=12)
    torch.testing.assert_close(boosted, plain + 2.0)  # w + s everywhere while the boost is on
    # The default path (no boxes, infer_scale 0) is the gate alone: the same as with no strip at all.
    out_default, _ = _gate_of(processor, attn, hidden, context, num_persons=1, infer_scale=0.0, infer_end=0)
    out_no_strip, no_strip = _gate_of(processor, attn, hidden, context, num_persons=1, strips_when_no_boxes=False)
    torch.testing.assert_close(out_default, out_no_strip, atol=0, rtol=0)
    torch.testing.assert_close(plain, no_strip, atol=0, rtol=0)
    assert plain.max() == 1.0 and (plain == 0).any()  # min-max normalised and thresholded, not all ones


def test_gate_off_is_ip_adapter_style_with_or_without_boxes():
    attn, processor = _layer_and_processor()
    hidden, context = torch.randn(1, 256, 32), torch.randn(1, 77 + 2 * TOKENS, CROSS_DIM)
    boxes = [[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0]]
    with_boxes, gate = _gate_of(
        processor, attn, hidden, context, num_persons=2, gate=False, boxes=boxes, infer_scale=2.0, infer_end=12
    )
    without, _ = _gate_of(processor, attn, hidden, context, num_persons=2, gate=False, strips_when_no_boxes=False)
    torch.testing.assert_close(with_boxes, without, atol=0, rtol=0)
    assert (gate == 1).all()
    gated, _ = _gate_of(processor, attn, hidden, context, num_persons=2, boxes=boxes)
    assert (gated - with_boxes).abs().max() > 1e-3


def test_overlapping_boxes_give_finite_output_and_one_boost():
    attn, processor = _layer_and_processor()
    hidden, context = torch.randn(2, 256, 32), torch.randn(2, 77 + 2 * TOKENS, CROSS_DIM)
    overlapping = [[0.0, 0.0, 1.0, 0.7], [0.0, 0.3, 1.0, 1.0]]
    out, gate = _gate_of(
        processor, attn, hidden, context, num_persons=2, boxes=overlapping, infer_scale=2.0, infer_end=12
    )
    assert torch.isfinite(out).all()
    assert gate.max() <= 3.0  # w <= 1 plus the boost of 2, applied once even where both boxes hold the cell
    _, plain = _gate_of(processor, attn, hidden, context, num_persons=2, boxes=overlapping)
    both = box_masks(torch.tensor([overlapping]), 16, 16)[0].all(0).reshape(16, 16)
    torch.testing.assert_close(gate[:, both], plain[:, both] + 2.0)


def test_one_settings_object_serves_every_step_and_builds_its_masks_once():
    """The pipeline keeps one SAASettings per image and moves its step: masks are built once per grid,
    and the layout still switches off at infer_end."""
    unet = tiny_unet()
    from dynamicid.models.saa import DynamicIDAttention, install_processors

    install_processors(unet, DynamicIDAttention.for_unet(unet, rank=4))
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77 + 2 * TOKENS, CROSS_DIM, generator=g)
    boxes = torch.tensor(OFF_EDGES[:2], dtype=torch.float64)
    shared = SAASettings(num_persons=2, boxes=boxes, infer_scale=2.0, infer_end=1, latent_size=(16, 16))
    outputs, cells = [], []
    with torch.no_grad():
        for step in (0, 1):
            shared.step = torch.tensor(step)
            outputs.append(
                unet(latents, torch.full((2,), 500), text, cross_attention_kwargs={"dynamicid": shared}).sample
            )
            cells.append({key: value[0] for key, value in shared._cells.items()})
            fresh = SAASettings(
                num_persons=2, boxes=boxes, step=step, infer_scale=2.0, infer_end=1, latent_size=(16, 16)
            )
            expected = unet(latents, torch.full((2,), 500), text, cross_attention_kwargs={"dynamicid": fresh}).sample
            torch.testing.assert_close(outputs[-1], expected, atol=0, rtol=0)
    assert sorted(key[:2] for key in cells[0]) == [(4, 4)]  # one entry per grid the SAA layers use (the lowest)
    assert all(cells[1][key] is cells[0][key] for key in cells[0])  # the second step reused them
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4  # and the layout boost did stop at infer_end
