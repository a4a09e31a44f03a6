"""The API contract: shapes, dtypes, and a clear ValueError for bad input."""
import pytest
import torch

from mage_fast.configs import MASK_ID
from mage_fast.reference import mage_vit_base_patch16


def test_shapes_and_dtypes(tiny, images):
    ids = tiny.tokenize(images)
    assert ids.dtype == torch.int64 and ids.shape == (2, 256) and 0 <= ids.min() and ids.max() < 1024
    assert torch.equal(ids, tiny.tokenize(images.double()))   # any float dtype is taken
    logits = tiny.logits(ids)
    assert logits.shape == (2, 256, 1024) and logits.dtype == torch.float32
    out = tiny.detokenize(ids.int())
    assert out.shape == (2, 3, 256, 256) and out.dtype == torch.float32


@pytest.mark.parametrize("bad,match", [
    (torch.rand(2, 3, 128, 128), "shape"),
    (torch.rand(3, 256, 256), "shape"),
    (torch.rand(0, 3, 256, 256), "shape"),
    (torch.randint(0, 2, (2, 3, 256, 256)), "float"),
    (torch.rand(2, 3, 256, 256) * 255, r"\[0, 1\]"),
    (torch.full((1, 3, 256, 256), float("nan")), "NaN"),
    ([[0.5]], "float"),
])
def test_tokenize_rejects(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny.tokenize(bad)


@pytest.mark.parametrize("bad,match", [
    (torch.full((1, 256), MASK_ID), "codebook ids"),
    (torch.full((1, 256), 1024), "codebook ids"),
    (torch.full((1, 256), -1), "codebook ids"),
    (torch.zeros(1, 255, dtype=torch.long), "shape"),
    (torch.zeros(1, 256), "integer"),
])
def test_detokenize_rejects(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny.detokenize(bad)


@pytest.mark.parametrize("value", [1100, 2025, 1024])
def test_logits_rejects_ids_that_are_neither_codes_nor_the_mask(tiny, value):
    with pytest.raises(ValueError, match="mask id"):
        tiny.logits(torch.full((1, 256), value))


@pytest.mark.parametrize("kwargs,match", [
    (dict(seeds=[]), "seeds"),
    (dict(seeds=[1.5]), "seeds"),
    (dict(seeds=[[1, 2]]), "seeds"),
    (dict(seeds="abc"), "seeds"),
    (dict(seeds=[1], num_iter=0), "num_iter"),
    (dict(seeds=[1], choice_temperature=-1.0), "choice_temperature"),
])
def test_generate_rejects(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny.generate(**kwargs)


@pytest.mark.parametrize("noise,match", [
    (torch.rand(2, 255), "shape"),
    (torch.rand(2, 256) + 1, r"\[0, 1\)"),
    (torch.zeros(2, 256, dtype=torch.long), "float"),
])
def test_forward_rejects_bad_noise(tiny, images, noise, match):
    with pytest.raises(ValueError, match=match):
        tiny(images, mask_ratio=0.6, noise=noise)


def test_base_config_builds_and_runs_one_logits_call():
    torch.manual_seed(0)
    model = mage_vit_base_patch16().eval()
    used = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad
               and n.split(".")[0] not in ("patch_embed", "cls_token", "mask_token", "decoder_pred"))
    assert 144e6 < used < 146e6                     # docs/mage.md#transformer: ~145M used
    assert 54e6 < sum(p.numel() for p in model.vqgan.parameters()) < 55e6   # tokenizer ~54.6M
    ids = torch.randint(0, 1024, (1, 256))
    ids[0, 100:] = MASK_ID
    with torch.no_grad():
        logits = model.logits(ids)
    assert logits.shape == (1, 256, 1024) and torch.isfinite(logits).all()


def test_training_forward_takes_images_or_their_ids(tiny, images):
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(2))
    ids = tiny.tokenize(images)
    assert torch.equal(tiny(images, 0.7, noise), tiny(tokens=ids, mask_ratio=0.7, noise=noise))
    assert torch.equal(tiny(tokens=ids.to(torch.int16), mask_ratio=0.7, noise=noise), tiny(images, 0.7, noise))


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one"),
    ({"images": "both"}, "exactly one"),
    ({"tokens": torch.full((1, 256), 1024)}, "codebook ids"),
    ({"tokens": torch.full((1, 256), MASK_ID)}, "codebook ids"),
    ({"tokens": torch.zeros(1, 255, dtype=torch.long)}, "shape"),
    ({"tokens": torch.zeros(1, 256)}, "integer"),
])
def test_training_forward_rejects(tiny, images, kwargs, match):
    if kwargs.get("images") == "both":
        kwargs = {"images": images, "tokens": tiny.tokenize(images)}
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs, mask_ratio=0.7)
