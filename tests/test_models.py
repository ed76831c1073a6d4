"""The models against timm (the reference implementation of the official code) and DEIT_FACTS.md."""

from unittest import mock

import pytest
import timm
import torch

from deit import DeiTOutput, VisionTransformer, count_parameters, create_model, list_models
from deit.models.vit import COMBINE_RULES, DropPath, ViTConfig, attention

# DEIT_FACTS.md §2: exact parameter counts.
OFFICIAL_PARAMS = {
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
    "deit_base_patch16_224": 86_567_656,
    "deit_base_patch16_384": 86_859_496,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_distilled_patch16_224": 87_338_192,
    "deit_base_distilled_patch16_384": 87_630_032,
}
SMALL_PRESETS = list_models("deit_*_patch4_*")


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random init leaves biases 0, LayerNorms 1/0 and timm's cls_token ~1e-6, which would hide a dropped bias,
    norm or token: jitter those (weight matrices are random already)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 or p.shape[0] == 1:  # biases, norms, tokens, pos_embed
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def images(model, batch: int = 2, seed: int = 0) -> torch.Tensor:
    c = model.config
    return torch.randn(batch, c.in_chans, *c.img_size, generator=torch.Generator().manual_seed(seed))


def test_registry_has_every_official_name():
    assert set(list_models("deit_*_patch16_*")) == set(OFFICIAL_PARAMS)


@pytest.fixture(scope="module", params=sorted(OFFICIAL_PARAMS))
def pair(request):
    """(name, ours, timm's), ours carrying timm's (jittered) random weights; both in eval mode."""
    name = request.param
    torch.manual_seed(0)
    reference = perturb_(timm.create_model(name, pretrained=False)).eval()
    # Our own init is skipped: every tensor is overwritten (saves seconds per base model).
    with mock.patch.object(VisionTransformer, "init_weights", lambda self: None):
        ours = create_model(name).eval()
    ours.load_state_dict(reference.state_dict())
    return name, ours, reference


def test_state_dict_layout_equals_timm(pair):
    name, ours, reference = pair
    ours_shapes = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    timm_shapes = [(k, tuple(v.shape)) for k, v in reference.state_dict().items()]
    assert ours_shapes == timm_shapes


def test_parameter_count_is_official(pair):
    name, ours, reference = pair
    assert count_parameters(ours) == OFFICIAL_PARAMS[name] == count_parameters(reference)


@torch.no_grad()
def test_outputs_equal_timm(pair):
    name, ours, reference = pair
    # One image at 384 px (577 tokens through a base model: the suite's costliest forwards); the same code takes
    # batches of 2 at 224 px. The 384-px models differ only in their position embedding, which one image checks.
    x = images(ours, batch=1 if ours.config.img_size == (384, 384) else 2)
    out, expected = ours(x), reference(x)
    assert isinstance(out, DeiTOutput)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-5)
    if not ours.config.distilled:
        assert out.dist_logits is None and out.logits is out.cls_logits
        return
    # The official eval output is the mean of the two heads' logits.
    torch.testing.assert_close(out.logits, (out.cls_logits + out.dist_logits) / 2, rtol=0, atol=1e-6)
    # Training mode (drop_path 0, no dropout: the same numbers): timm returns the pair of heads.
    ours.train(), reference.train(), reference.set_distilled_training(True)
    try:
        out_train, (cls_logits, dist_logits) = ours(x), reference(x)
    finally:
        ours.eval(), reference.eval(), reference.set_distilled_training(False)
    assert type(out_train) is DeiTOutput
    torch.testing.assert_close(out_train.cls_logits, cls_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_train.dist_logits, dist_logits, rtol=0, atol=1e-5)


@torch.no_grad()
def test_combine_rules():
    base = perturb_(create_model("deit_micro_distilled_patch4_32")).eval()
    x = images(base)
    outs = {}
    for rule in COMBINE_RULES:
        model = create_model("deit_micro_distilled_patch4_32", combine=rule).eval()
        model.load_state_dict(base.state_dict())
        outs[rule] = model(x)
    cls, dist = outs["cls"].cls_logits, outs["cls"].dist_logits
    assert not torch.allclose(cls, dist, atol=1e-3)  # else the rules below could not be told apart
    for out in outs.values():  # the heads themselves do not depend on the rule
        torch.testing.assert_close(out.cls_logits, cls, rtol=0, atol=0)
        torch.testing.assert_close(out.dist_logits, dist, rtol=0, atol=0)
    torch.testing.assert_close(outs["mean_logits"].logits, (cls + dist) / 2)
    torch.testing.assert_close(outs["mean_softmax"].logits.softmax(-1), (cls.softmax(-1) + dist.softmax(-1)) / 2)
    torch.testing.assert_close(outs["cls"].logits, cls, rtol=0, atol=0)
    torch.testing.assert_close(outs["dist"].logits, dist, rtol=0, atol=0)
    with pytest.raises(ValueError, match="combine must be one of"):
        create_model("deit_micro_distilled_patch4_32", combine="max")


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_small_image_presets_forward(name):
    model = create_model(name)
    c = model.config
    assert c.img_size == ((28, 28) if name.endswith("_28") else (32, 32))
    assert c.in_chans == (1 if name.endswith("_28") else 3)
    x = images(model)
    for training in (False, True):  # the same output type in both modes
        out = model.train(training)(x)
        assert type(out) is DeiTOutput
        assert out.logits.shape == out.cls_logits.shape == (2, c.num_classes) and torch.isfinite(out.logits).all()
        assert (out.dist_logits is not None) == c.distilled
    out.logits.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())


def test_wrong_image_size_is_a_clear_error():
    model = create_model("deit_micro_patch4_28")
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 28, 28\), got \(2, 3, 28, 28\)"):
        model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViTConfig(img_size=30, patch_size=4)


def test_stochastic_depth_rises_linearly():
    model = create_model("deit_tiny_patch16_224", drop_path_rate=0.1)
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in model.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 12))
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)


def test_drop_path_drops_whole_samples_in_training_only():
    layer = DropPath(0.5).train()
    torch.manual_seed(0)
    out = layer(torch.ones(1000, 4, 8))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # kept samples rescaled by 1/keep
    assert (per_sample.min(1).values == per_sample.max(1).values).all()  # whole samples dropped
    assert 400 < (per_sample[:, 0] == 0).sum() < 600
    x = torch.randn(3, 4)
    assert torch.equal(layer.eval()(x), x)


@pytest.mark.parametrize("tokens", [27, 80])  # fewer tokens than the head's width (scores scaled), and more (q scaled)
def test_training_attention_equals_sdpa(tokens):
    """The matmul form a CPU training step takes gives SDPA's output and gradients."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, tokens, 64, generator=gen, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 3, tokens, 64, generator=gen)
    ours = attention(q, k, v)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_initialisation_statistics():
    torch.manual_seed(0)
    model = create_model("deit_small_distilled_patch16_224")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.detach().flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    assert abs(weights.mean().item()) < 1e-4
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 12 + 1
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0 for m in norms)
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.05)
    tokens = torch.cat([model.cls_token.flatten(), model.dist_token.flatten()])
    assert tokens.std().item() == pytest.approx(0.02, rel=0.15)
    # The patch conv keeps PyTorch's default: uniform(+-1/sqrt(fan_in)).
    conv = model.patch_embed.proj.weight
    bound = 1 / (3 * 16 * 16) ** 0.5
    assert conv.abs().max().item() <= bound
    assert conv.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)


@pytest.mark.parametrize("name", ["deit_mini_distilled_patch7_28", "deit_mini_patch7_28"])
def test_trace_reproduces_forward(name):
    """The analysis path (explicit attention, every token kept) gives forward's outputs: its attention
    probabilities are the ones the fused kernel used."""
    model = perturb_(create_model(name)).eval()
    x = images(model, batch=3)
    with torch.no_grad():
        out, trace = model(x), model.trace(x)
    for field in ("logits", "cls_logits", "dist_logits"):
        if getattr(out, field) is None:
            assert getattr(trace.output, field) is None
            continue
        torch.testing.assert_close(getattr(trace.output, field), getattr(out, field), rtol=0, atol=1e-5)
    c = model.config
    tokens = c.num_prefix_tokens + c.grid_size[0] * c.grid_size[1]
    assert len(trace.attentions) == c.depth and len(trace.tokens) == c.depth + 1
    assert all(a.shape == (3, c.num_heads, tokens, tokens) for a in trace.attentions)
    torch.testing.assert_close(trace.attentions[0].sum(-1), torch.ones(3, c.num_heads, tokens))
    torch.testing.assert_close(trace.tokens[0], model.embed(x), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.norm(trace.tokens[-1]), model.forward_features(x), rtol=0, atol=1e-5)
