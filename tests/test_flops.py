"""Nominal FLOPs (deit.flops), what `deit bench` and every run's MFU count, against the count by hand: patch
embedding 2·P·C·p²·D, per block qkv 6·N·D², attention 4·N²·D, projection 2·N·D², MLP 4·N·D·H, the heads 2·D·K
each; a training step three times the forward less the patch embedding's input gradient (the image needs
none)."""

import pytest
import torch

from deit.flops import forward_flops_per_image, train_flops_per_image
from deit.models import create_model


def by_hand(model) -> tuple[int, int]:
    c = model.config
    grid = [s // c.patch_size for s in c.img_size]
    patches = grid[0] * grid[1]
    tokens, heads = patches + (2 if c.distilled else 1), 2 if c.distilled else 1
    D, H = c.embed_dim, int(c.embed_dim * c.mlp_ratio)
    embed = 2 * patches * c.in_chans * c.patch_size ** 2 * D
    block = 6 * tokens * D * D + 4 * tokens * tokens * D + 2 * tokens * D * D + 4 * tokens * D * H
    forward = embed + c.depth * block + heads * 2 * D * c.num_classes
    return forward, 3 * forward - embed


@pytest.mark.parametrize("name, img_size", [("deit_mini_patch8_32", 40), ("deit_mini_distilled_patch8_32", 40),
                                            ("deit_mini_patch8_32", 104)])  # 170 tokens: SDPA's path in training
def test_nominal_flops_match_the_count_by_hand(name, img_size):
    model = create_model(name, num_classes=10, in_chans=1, img_size=img_size)
    x = torch.zeros(2, 1, img_size, img_size)
    forward, step = by_hand(model)
    assert forward_flops_per_image(model.eval(), x) == forward  # inference: SDPA's CPU kernel, counted all the same
    state = torch.get_rng_state()
    assert train_flops_per_image(model, x) == step
    assert torch.equal(torch.get_rng_state(), state)  # stochastic depth's draws: a run's must not change
    assert all(p.grad is None for p in model.parameters())  # counted on a copy
