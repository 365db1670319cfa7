"""Model parts against the method spec, on a tiny UNet: base equivalence, the gate's formula,
routing, batching, dtypes, non-square grids, telemetry, IMR/KeyPointEncoder and checkpoints."""

import copy

import pytest
import torch
from tiny import CROSS_DIM, tiny_unet

from dynamicid.models import IMR, FaceEncoder, KeyPointEncoder
from dynamicid.models.imr import landmark_map_to_tensor
from dynamicid.models.saa import (
    DynamicIDAttention,
    SAAProcessor,
    SAASettings,
    apply_layout,
    box_masks,
    equal_strips,
    gate_from_logits,
    grid_shape,
    install_processors,
    remove_processors,
    routing_mask,
)


@pytest.fixture()
def unet():
    return tiny_unet()


def inputs(batch=2, persons=2, size=(16, 16), seed=1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, *size, generator=g)
    text = torch.randn(batch, 77, CROSS_DIM, generator=g)
    ids = torch.randn(batch, 4 * persons, CROSS_DIM, generator=g)
    return latents, torch.full((batch,), 500), text, ids


def with_lora_noise(adapter: DynamicIDAttention) -> DynamicIDAttention:
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".up." in name:
                p.normal_(std=0.02)
    return adapter


def test_scale_zero_and_zero_lora_reproduce_the_base_unet(unet):
    latents, t, text, ids = inputs()
    with torch.no_grad():
        base = unet(latents, t, text).sample
        previous = install_processors(unet, DynamicIDAttention.for_unet(unet, rank=4))
        settings = SAASettings(
            num_persons=2, id_scale=0.0, boxes=[[0, 0, 1, 0.5], [0, 0.5, 1, 1]], infer_scale=2, infer_end=5
        )
        same = unet(latents, t, torch.cat([text, ids], 1), cross_attention_kwargs={"dynamicid": settings}).sample
        torch.testing.assert_close(same, base, atol=1e-5, rtol=0)
        changed = unet(
            latents, t, torch.cat([text, ids], 1), cross_attention_kwargs={"dynamicid": SAASettings(num_persons=2)}
        ).sample
        assert (changed - base).abs().max() > 1e-3
        remove_processors(unet, previous)
        torch.testing.assert_close(unet(latents, t, text).sample, base, atol=0, rtol=0)


def test_lora_scale_zero_ignores_trained_lora(unet):
    latents, t, text, ids = inputs()
    with torch.no_grad():
        base = unet(latents, t, text).sample
        install_processors(unet, with_lora_noise(DynamicIDAttention.for_unet(unet, rank=4)))
        off = SAASettings(num_persons=2, id_scale=0.0, lora_scale=0.0)
        on = SAASettings(num_persons=2, id_scale=0.0, lora_scale=1.0)
        context = torch.cat([text, ids], 1)
        torch.testing.assert_close(
            unet(latents, t, context, cross_attention_kwargs={"dynamicid": off}).sample, base, atol=1e-5, rtol=0
        )
        assert (unet(latents, t, context, cross_attention_kwargs={"dynamicid": on}).sample - base).abs().max() > 1e-4


def test_gate_formula_on_hand_made_logits():
    logits = torch.zeros(1, 2, 4, 2)
    # per query, the sum over 2 heads x 2 tokens: 0, 2, 6, 10 -> min-max: 0, 0.2, 0.6, 1.0 -> threshold 0.3
    for q, total in enumerate([0.0, 2.0, 6.0, 10.0]):
        logits[0, :, q, :] = total / 4
    gate = gate_from_logits(logits, threshold=0.3)
    torch.testing.assert_close(gate, torch.tensor([[0.0, 0.0, 0.6, 1.0]]))
    inside = torch.tensor([[False, True, True, False]])
    boosted = apply_layout(gate, inside, 2.0)  # outside: w/3; inside: w + 2
    torch.testing.assert_close(boosted, torch.tensor([[0.0, 2.0, 2.6, 1.0 / 3]]))
    torch.testing.assert_close(apply_layout(gate, inside, 0.0), gate)


def test_constant_activation_does_not_divide_by_zero():
    gate = gate_from_logits(torch.ones(2, 3, 5, 8), threshold=0.3)
    assert torch.isfinite(gate).all() and (gate == 0).all()


def test_negative_logits_are_summed_raw_not_as_probabilities():
    logits = torch.zeros(1, 1, 3, 2)
    logits[0, 0, :, 0] = torch.tensor([-4.0, -1.0, 2.0])
    torch.testing.assert_close(gate_from_logits(logits, 0.0), torch.tensor([[0.0, 0.5, 1.0]]))


def test_boxes_grids_and_routing_masks():
    assert grid_shape(64 * 96, (64, 96)) == (64, 96)
    assert grid_shape(32 * 48, (64, 96)) == (32, 48)
    assert grid_shape(4 * 6, (25, 41)) == (4, 6)  # strided convs round up: 25->13->7->4, 41->21->11->6
    assert grid_shape(64, None) == (8, 8)
    with pytest.raises(ValueError, match="latent_size"):
        grid_shape(24, None)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0]]])
    inside = box_masks(boxes, 2, 4)
    assert inside[0, 0].tolist() == [True, True, False, False, True, True, False, False]
    allowed = routing_mask(inside, tokens_per_person=2)
    assert allowed[0, 0].tolist() == [True, True, False, False]  # left: person 0's two tokens
    assert allowed[0, 3].tolist() == [False, False, True, True]
    lone = routing_mask(torch.zeros(1, 2, 3, dtype=torch.bool), 2)
    assert lone.all()  # outside every box: all tokens
    torch.testing.assert_close(equal_strips(2), torch.tensor([[0, 0, 1, 0.5], [0, 0.5, 1, 1]], dtype=torch.float64))
    torch.testing.assert_close(equal_strips(1), torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64))


def _attn2(unet):
    return unet.down_blocks[-1].attentions[0].transformer_blocks[0].attn2  # the tiny UNet attends at its lowest level


def test_routing_hides_the_other_persons_tokens(unet):
    attn = _attn2(unet)
    torch.manual_seed(0)
    processor = SAAProcessor(32, 32, CROSS_DIM, 32, rank=4)
    half = CROSS_DIM // 2
    with torch.no_grad():
        processor.to_k_ip.weight[:, half:] = 0  # keys ignore the second half of each ID token's features
    hidden = torch.randn(1, 16 * 16, 32)
    text = torch.randn(1, 77, CROSS_DIM)
    ids_a, ids_b = (torch.randn(1, 4, CROSS_DIM) for _ in range(2))
    ids_b2 = ids_b.clone()
    ids_b2[..., half:] = torch.randn(1, 4, CROSS_DIM - half)  # B's values change, its keys (and so the gate) do not
    boxes = [[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0]]
    settings = SAASettings(num_persons=2, boxes=boxes, gate_threshold=0.0)
    with torch.no_grad():
        first = processor(attn, hidden, torch.cat([text, ids_a, ids_b], 1), dynamicid=settings)
        second = processor(attn, hidden, torch.cat([text, ids_a, ids_b2], 1), dynamicid=settings)
    left = box_masks(torch.tensor([boxes]), 16, 16)[0, 0]
    torch.testing.assert_close(first[0, left], second[0, left], atol=1e-6, rtol=0)
    assert (first[0, ~left] - second[0, ~left]).abs().max() > 1e-3
    # Without routing (IP-Adapter style, gate off), A's region also sees B.
    with torch.no_grad():
        unrouted = SAASettings(num_persons=2, gate=False, boxes=boxes)
        a = processor(attn, hidden, torch.cat([text, ids_a, ids_b], 1), dynamicid=unrouted)
        b = processor(attn, hidden, torch.cat([text, ids_a, ids_b2], 1), dynamicid=unrouted)
    assert (a[0, left] - b[0, left]).abs().max() > 1e-3


def test_batch_of_two_equals_two_batches_of_one(unet):
    install_processors(unet, with_lora_noise(DynamicIDAttention.for_unet(unet, rank=4)))
    latents, t, text, ids = inputs(batch=2)
    settings = lambda: SAASettings(num_persons=2, boxes=[[0, 0, 1, 0.5], [0, 0.5, 1, 1]], infer_scale=2, infer_end=10)
    context = torch.cat([text, ids], 1)
    with torch.no_grad():
        together = unet(latents, t, context, cross_attention_kwargs={"dynamicid": settings()}).sample
        apart = torch.cat(
            [
                unet(
                    latents[i : i + 1],
                    t[i : i + 1],
                    context[i : i + 1],
                    cross_attention_kwargs={"dynamicid": settings()},
                ).sample
                for i in range(2)
            ]
        )
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-5)


def test_per_element_boxes_and_the_layout_window(unet):
    install_processors(unet, with_lora_noise(DynamicIDAttention.for_unet(unet, rank=4)))
    latents, t, text, ids = inputs(batch=2)
    context = torch.cat([text, ids], 1)
    per_element = torch.tensor([[[0, 0, 1, 0.5], [0, 0.5, 1, 1]], [[0, 0.5, 1, 1], [0, 0, 1, 0.5]]])
    with torch.no_grad():
        early = unet(
            latents,
            t,
            context,
            cross_attention_kwargs={
                "dynamicid": SAASettings(num_persons=2, boxes=per_element, step=0, infer_scale=2, infer_end=12)
            },
        ).sample
        late = unet(
            latents,
            t,
            context,
            cross_attention_kwargs={
                "dynamicid": SAASettings(num_persons=2, boxes=per_element, step=12, infer_scale=2, infer_end=12)
            },
        ).sample
        no_layout = unet(
            latents,
            t,
            context,
            cross_attention_kwargs={"dynamicid": SAASettings(num_persons=2, boxes=per_element, infer_scale=0)},
        ).sample
    assert (early - late).abs().max() > 1e-4  # the boost applies only before infer_end
    torch.testing.assert_close(late, no_layout, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="boxes must have shape"):
        SAASettings(num_persons=3, boxes=[[0, 0, 1, 1]]).resolved_boxes()


def test_non_square_grid_and_gate_telemetry(unet):
    install_processors(unet, DynamicIDAttention.for_unet(unet, rank=4))
    latents, t, text, ids = inputs(batch=1, size=(16, 24))
    maps = []
    settings = SAASettings(
        num_persons=2,
        latent_size=(16, 24),
        boxes=[[0, 0, 1, 0.5], [0, 0.5, 1, 1]],
        infer_scale=2,
        infer_end=1,
        gate_maps=maps,
    )
    with torch.no_grad():
        out = unet(latents, t, torch.cat([text, ids], 1), cross_attention_kwargs={"dynamicid": settings}).sample
    assert out.shape == (1, 4, 16, 24)
    # The tiny UNet attends at its lowest level, a quarter of the latent each way: a 4x6 grid, every layer.
    assert {tuple(m["gate"].shape) for m in maps} == {(1, 4, 6)} and len(maps) >= 3
    assert all(m["layer"].endswith("attn2.processor") for m in maps)
    gate = maps[0]["gate"][0]
    # The two boxes cover the grid, and step 0 < infer_end: every cell gets the boost, w + 2 with w in [0, 1].
    assert gate.min() >= 2.0 and gate.max() <= 3.0, (gate.min(), gate.max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_close_to_fp32(unet, dtype):
    install_processors(unet, with_lora_noise(DynamicIDAttention.for_unet(unet, rank=4)))
    latents, t, text, ids = inputs(batch=2)
    context = torch.cat([text, ids], 1)
    settings = lambda: SAASettings(num_persons=2, infer_scale=2, infer_end=5)
    with torch.no_grad():
        reference = unet(latents, t, context, cross_attention_kwargs={"dynamicid": settings()}).sample
        low = copy.deepcopy(unet).to(dtype)
        try:
            out = low(latents.to(dtype), t, context.to(dtype), cross_attention_kwargs={"dynamicid": settings()}).sample
        except RuntimeError as err:  # some CPU builds lack fp16 kernels
            pytest.skip(f"{dtype} not supported on this CPU ({err}); benchmarks/gpu_all.sh runs SAA in fp16 on a GPU")
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.15 * reference.abs().max()


def test_face_encoder_shapes_and_unconditional_tokens():
    encoder = FaceEncoder(id_dim=128, clip_dim=64, cross_attention_dim=32, heads=2, dim_head=8)
    tokens = encoder(torch.randn(3, 128), torch.randn(3, 257, 64))
    assert tokens.shape == (3, 4, 32)
    assert encoder.unconditional(torch.randn(2, 257, 64)).shape == (2, 4, 32)
    with pytest.raises(ValueError, match="512 dims|takes 128"):
        encoder(torch.randn(1, 512), torch.randn(1, 257, 64))


def test_keypoint_encoder_and_imr_shapes():
    encoder = KeyPointEncoder()
    map96 = torch.zeros(96, 96, dtype=torch.uint8)
    map96[40, 50] = 255
    features = encoder.eval()(torch.stack([landmark_map_to_tensor(map96)] * 2))
    assert features.shape == (2, 768)
    with pytest.raises(ValueError, match="96, 96"):
        encoder(torch.zeros(1, 1, 64, 64))
    imr = IMR()
    edited = imr.edit(
        torch.randn(4, 768), torch.randn(1, 768), torch.randn(1, 768), torch.randn(5, 768), torch.randn(5, 768)
    )
    assert edited.shape == (5, 4, 768)
    batched = imr(torch.randn(2, 4, 768), torch.randn(2, 4, 1024), torch.randn(2, 3, 4, 1024))
    assert batched.shape == (2, 3, 4, 768)


def test_stage_two_gradients_reach_only_imr_and_keypoint_encoder():
    face_encoder = FaceEncoder(id_dim=128, clip_dim=64, heads=2, dim_head=8).requires_grad_(False)
    keypoints, imr = KeyPointEncoder(), IMR()
    source = face_encoder(torch.randn(1, 128), torch.randn(1, 257, 64))
    maps = torch.rand(3, 1, 96, 96) * 2 - 1
    features = keypoints(maps)
    prompts = torch.randn(3, 768)
    edited = imr.edit(source[0], features[:1], prompts[:1], features[1:], prompts[1:])
    edited.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in imr.parameters())
    assert all(p.grad is not None for p in keypoints.parameters())
    assert all(p.grad is None for p in face_encoder.parameters())


def test_stage_one_gradients_reach_only_the_adapter_and_face_encoder(unet):
    unet.requires_grad_(False)
    adapter = DynamicIDAttention.for_unet(unet, rank=4)
    install_processors(unet, adapter)
    encoder = FaceEncoder(id_dim=128, clip_dim=64, cross_attention_dim=CROSS_DIM, heads=2, dim_head=8)
    latents, t, text, _ = inputs(batch=1)
    ids = encoder(torch.randn(1, 128), torch.randn(1, 257, 64))
    out = unet(
        latents, t, torch.cat([text, ids], 1), cross_attention_kwargs={"dynamicid": SAASettings(num_persons=1)}
    ).sample
    out.pow(2).mean().backward()
    adapter_ids = {id(p) for p in adapter.parameters()}
    for name, p in unet.named_parameters():
        if id(p) not in adapter_ids:
            assert p.grad is None, name
    assert all(p.grad is not None for p in encoder.parameters())
    ip = [p for n, p in adapter.named_parameters() if "_ip" in n]
    assert ip and all(p.grad is not None and p.grad.abs().sum() > 0 for p in ip)


def test_the_saa_processor_traces_without_graph_breaks(unet):
    """The gate, layout and routing are tensor code: torch.compile sees one graph (no telemetry asked)."""
    import torch._dynamo

    attn = _attn2(unet)
    processor = SAAProcessor(32, 32, CROSS_DIM, 32, rank=4)
    hidden = torch.randn(2, 16 * 16, 32)
    context = torch.randn(2, 77 + 8, CROSS_DIM)
    settings = SAASettings(num_persons=2, boxes=[[0, 0, 1, 0.5], [0, 0.5, 1, 1]], step=3, infer_scale=2.0, infer_end=12)

    def call(h, c):
        return processor(attn, h, c, dynamicid=settings)

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(call)(hidden, context)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_changing_steps_do_not_recompile(unet):
    """With the step as a tensor, the layout switch at infer_end is arithmetic, not a new graph."""
    from torch._dynamo.testing import CompileCounter

    attn = _attn2(unet)
    processor = SAAProcessor(32, 32, CROSS_DIM, 32, rank=4)
    hidden, context = torch.randn(2, 256, 32), torch.randn(2, 85, CROSS_DIM)
    counter = CompileCounter()

    def call(h, c, settings):
        return processor(attn, h, c, dynamicid=settings)

    compiled = torch.compile(call, backend=counter)
    boxes = [[0, 0, 1, 0.5], [0, 0.5, 1, 1]]
    outputs = []
    for step in range(4):
        settings = SAASettings(num_persons=2, boxes=boxes, step=torch.tensor(step), infer_scale=2.0, infer_end=2)
        outputs.append(compiled(hidden, context, settings))
        eager = processor(
            attn,
            hidden,
            context,
            dynamicid=SAASettings(num_persons=2, boxes=boxes, step=step, infer_scale=2.0, infer_end=2),
        )
        torch.testing.assert_close(outputs[-1], eager)
    assert counter.frame_count == 1
    assert (outputs[1] - outputs[2]).abs().max() > 1e-5  # the layout did switch off at infer_end


def test_lora_under_autocast_skips_the_fp32_copy_and_gives_the_same_values():
    """Issue 29: under bf16 autocast the LoRA branch no longer copies its input to fp32 first (autocast casts for
    the matmuls anyway); the result is the same, bit for bit, for fp32 and bf16 inputs."""
    from dynamicid.models.saa import LoRALinear

    torch.manual_seed(0)
    lora = LoRALinear(16, 8, 4)
    torch.nn.init.normal_(lora.up.weight)
    for x in (torch.randn(3, 16), torch.randn(3, 16).bfloat16()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = lora(x)
            cast_first = lora.up(lora.down(x.float())).to(x.dtype)
        assert fast.dtype == x.dtype and torch.equal(fast, cast_first)


def test_a_detached_gate_gives_the_same_output_and_no_gradient_through_itself(unet):
    """--no-gate-gradients (detach_gate): the gate is computed outside autograd; the forward pass is unchanged and
    to_k_ip then learns only through the softmax, not through the gate."""
    attn = _attn2(unet)
    torch.manual_seed(0)
    processor = SAAProcessor(32, 32, CROSS_DIM, 32, rank=4)
    hidden, context = torch.randn(1, 256, 32), torch.randn(1, 81, CROSS_DIM)
    outputs, grads = [], []
    for detach in (False, True):
        processor.zero_grad()
        out = processor(attn, hidden, context, dynamicid=SAASettings(num_persons=1, detach_gate=detach))
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(processor.to_k_ip.weight.grad.clone())
    assert torch.equal(outputs[0], outputs[1])
    assert (grads[0] - grads[1]).abs().max() > 1e-6 and grads[1].abs().max() > 0
