"""The training forward's masking: counts, subsets, ties, the mask-ratio draw (docs/mage.md#training-forward)."""
import math

import pytest
import torch

from mage_fast.reference import mage_vit_tiny_test


@pytest.mark.parametrize("ratio", [0.5, 0.55, 0.6935, 0.73, 1.0])
def test_drop_and_mask_counts(tiny, ratio):
    noise = torch.rand(4, 256, generator=torch.Generator().manual_seed(int(ratio * 1000)))
    dropped, masked = tiny.masks_from_noise(noise, ratio)
    assert (dropped.sum(1) == 128).all()
    assert (masked.sum(1) == math.ceil(256 * ratio)).all()
    assert not (dropped & ~masked).any()                     # dropped is a subset of masked
    order = noise.argsort(1)
    assert dropped.gather(1, order[:, :128]).all()            # the smallest noise values


def test_given_ratio_and_noise_is_deterministic(tiny, images):
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(2))
    a = tiny(images, mask_ratio=0.65, noise=noise)
    b = tiny(images, mask_ratio=0.65, noise=noise)
    assert torch.equal(a, b) and torch.isfinite(a)


def test_noise_with_ties_at_a_threshold_is_rejected(tiny, images):
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(3))
    order = noise[0].argsort()
    noise[0, order[128]] = noise[0, order[127]]   # tie across the drop threshold
    with pytest.raises(ValueError, match="ties"):
        tiny(images, mask_ratio=0.7, noise=noise)


def test_default_draws_train_and_give_a_finite_loss(images):
    torch.manual_seed(0)
    model = mage_vit_tiny_test().train()
    loss = model(images)
    loss.backward()
    assert torch.isfinite(loss) and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_mask_ratio_draw_is_the_truncated_normal(tiny):
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([tiny.sample_mask_ratio(g) for _ in range(4000)], dtype=torch.float64)
    assert draws.min() >= 0.5 and draws.max() <= 1.0
    a, b = (0.5 - 0.55) / 0.25, (1.0 - 0.55) / 0.25
    def phi(x):
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    def cdf(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))
    mean = 0.55 + 0.25 * (phi(a) - phi(b)) / (cdf(b) - cdf(a))   # ~0.694 (docs/mage.md#training-forward)
    assert abs(mean - 0.694) < 1e-3
    assert abs(draws.mean().item() - mean) < 0.01   # ~5 standard errors at 4000 draws


@pytest.mark.parametrize("ratio", [0.49, 1.01])
def test_mask_ratio_out_of_range(tiny, images, ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny(images, mask_ratio=ratio, noise=torch.rand(2, 256))
