"""mage_fast.compat: the official models_mage / models_vit_mage interface on the fast modules
(constructor arguments, return values, attributes, refusals). Against the official code itself:
test_compat_official.py. Where images go through the tokenizer, or a tokenizer file is written,
the models are built with the tiny test tokenizer (the official one takes seconds per image on a
CPU); nothing tested here depends on its size."""
import contextlib
import logging
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mage_fast
from mage_fast.compat import models_mage, models_vit_mage
from mage_fast.compat.mask_ratio import InverseCdfTruncnorm, mask_ratio_generator
from mage_fast.compat.tokenizer import VQModel
from mage_fast.configs import MASK_ID, TINY_TEST
from mage_fast.recognition.classifier import build_classifier
from mage_fast.reference import MAGE
from mage_fast.reference.model import threshold_sets

SIZES = dict(embed_dim=128, depth=2, num_heads=2, decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=2)
VIT_SIZES = dict(embed_dim=128, depth=2, num_heads=2)


@contextlib.contextmanager
def tiny_tokenizer():
    """Models built inside have the tiny test tokenizer."""
    with pytest.MonkeyPatch.context() as mp:
        for module in (models_mage, models_vit_mage):
            mp.setattr(module, "VQGANConfig", lambda: TINY_TEST.vqgan)
        yield


def compat_mage(**kwargs):
    torch.manual_seed(0)
    with tiny_tokenizer():
        return models_mage.MaskedGenerativeEncoderViT(**SIZES, vqgan_ckpt_path=None, **kwargs)


@pytest.fixture(scope="module")
def model():
    """Dropout off (its draws are not the reference's), in training mode."""
    model = compat_mage(norm_layer=partial(nn.LayerNorm, eps=1e-6))
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


@pytest.fixture(scope="module")
def reference(model):
    ref = MAGE(**SIZES, vqgan=TINY_TEST.vqgan, dropout=0.0)
    ref.load_state_dict(model.state_dict())
    return ref


def seeded(fn, seed=0):
    np.random.seed(seed)
    torch.manual_seed(seed)
    return fn()


def test_constructor_defaults_and_attributes():
    model = models_mage.MaskedGenerativeEncoderViT(**SIZES, vqgan_ckpt_path=None)
    # The class's default norm_layer is nn.LayerNorm (eps 1e-5); the factories pass eps 1e-6.
    assert {m.eps for blk in [*model.blocks, *model.decoder_blocks] for m in (blk.norm1, blk.norm2)} == {1e-5}
    assert model.norm.eps == model.decoder_norm.eps == 1e-5
    assert model.token_emb.LayerNorm.eps == 1e-6 and model.mlm_layer.ln.eps == 1e-5  # not built by norm_layer
    assert (model.codebook_size, model.fake_class_label, model.mask_token_label) == (1024, 1100, 2024)
    assert model.pad_with_cls_token and model.patch_embed.num_patches == 256 and model.norm_pix_loss is False
    ratio = (model.mask_ratio_min, model.mask_ratio_max, model.mask_ratio_mu, model.mask_ratio_std)
    assert ratio == (0.5, 1, 0.55, 0.25)
    assert [n for n, _ in model.named_children()] == list(models_mage.OFFICIAL_ORDER)
    with torch.device("meta"):
        fast = mage_fast.MAGE(**SIZES)
    assert sorted(model.state_dict()) == sorted(fast.state_dict())
    # decoder_pred moved to the official place: named_parameters in the official order
    names = [n for n, _ in model.named_parameters()]
    assert names.index("decoder_norm.bias") + 1 == names.index("decoder_pred.weight")


def test_every_official_argument_is_taken():
    model = models_mage.MaskedGenerativeEncoderViT(
        img_size=256, patch_size=16, in_chans=3, **SIZES, mlp_ratio=2., norm_layer=partial(nn.LayerNorm, eps=1e-4),
        norm_pix_loss=True, mask_ratio_min=0.3, mask_ratio_max=0.9, mask_ratio_mu=0.5, mask_ratio_std=0.2,
        vqgan_ckpt_path=None)
    assert model.blocks[0].mlp.fc1.out_features == 256 and model.blocks[1].norm2.eps == 1e-4
    assert model.norm_pix_loss is True and (model.mask_ratio_min, model.mask_ratio_max) == (0.3, 0.9)
    with torch.device("meta"):
        base, large = models_mage.mage_vit_base_patch16(vqgan_ckpt_path=None), \
            models_mage.mage_vit_large_patch16(vqgan_ckpt_path=None)
    assert (base.config, large.config) == (mage_fast.MAGE_B, mage_fast.MAGE_L)
    assert base.norm.eps == large.blocks[0].norm1.eps == 1e-6


@pytest.mark.parametrize("kwargs, message", [
    (dict(img_size=224), "img_size must be 256"),
    (dict(patch_size=8), "patch_size 16"),
    (dict(norm_layer=nn.BatchNorm1d), "norm_layer must build an affine nn.LayerNorm"),
    (dict(norm_layer=partial(nn.LayerNorm, elementwise_affine=False)), "norm_layer must build an affine"),
    (dict(mask_ratio_std=0.0), "mask_ratio_std must be > 0"),
    (dict(mask_ratio_min=0.8, mask_ratio_max=0.6), "mask_ratio_min <= mask_ratio_max"),
])
def test_unsupported_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models_mage.MaskedGenerativeEncoderViT(**SIZES, vqgan_ckpt_path=None, **kwargs)


def test_factories_take_no_sizes():
    with pytest.raises(TypeError):  # as the official factory: the size is the factory's
        models_mage.mage_vit_base_patch16(vqgan_ckpt_path=None, depth=2)


def test_vqgan_ckpt_path_loads_the_tokenizer(tmp_path, monkeypatch):
    torch.manual_seed(1)
    tokenizer = compat_mage().vqgan
    torch.save({"state_dict": tokenizer.state_dict()}, tmp_path / "vq.ckpt")
    with tiny_tokenizer():
        model = models_mage.MaskedGenerativeEncoderViT(**SIZES, vqgan_ckpt_path=str(tmp_path / "vq.ckpt"))
    for k, v in tokenizer.state_dict().items():
        assert torch.equal(model.vqgan.state_dict()[k], v), k
    monkeypatch.chdir(tmp_path)  # the official default, a file in the working directory, absent here
    with pytest.raises(FileNotFoundError, match="vqgan_jax_strongaug.ckpt"):
        models_mage.MaskedGenerativeEncoderViT(**SIZES)
    with pytest.raises(FileNotFoundError, match="vqgan_jax.ckpt"):
        models_vit_mage.VisionTransformerMage(**VIT_SIZES)


def test_forward_returns_the_official_tuple(model, reference, images):
    """(loss, imgs, token_all_mask) on numpy's and torch's global draws; the loss is the
    reference's at the drawn ratio and noise, the mask its masked set with slot 0 unmasked."""
    loss, imgs, token_all_mask = seeded(lambda: model(images))
    ratio, noise = seeded(lambda: (model.mask_ratio_generator.rvs(1)[0], torch.rand(2, 256)))
    assert imgs is images and loss.dtype == torch.float32 and loss.dim() == 0 and loss.requires_grad
    assert token_all_mask.dtype == torch.float32 and token_all_mask.shape == (2, 257)
    masked = threshold_sets(noise, 128, int(np.ceil(256 * ratio)))[1]
    assert torch.equal(token_all_mask, torch.cat([torch.zeros(2, 1), masked.float()], 1))
    torch.testing.assert_close(loss, reference(images, mask_ratio=float(ratio), noise=noise), rtol=1e-5, atol=1e-6)


def test_encoder_decoder_and_loss_compose_to_forward(model, images):
    latent, gt, drop, token_all_mask = seeded(lambda: model.forward_encoder(images))
    loss, _, expected_mask = seeded(lambda: model(images))
    assert latent.shape == (2, 129, 128) and gt.dtype == torch.int64 and torch.equal(gt, model.tokenize(images))
    assert drop.dtype == token_all_mask.dtype == torch.float32 and torch.equal(token_all_mask, expected_mask)
    assert drop.sum(1).tolist() == [128, 128] and not drop[:, 0].any() and bool((drop <= token_all_mask).all())
    logits = model.forward_decoder(latent, drop, token_all_mask)
    assert logits.shape == (2, 257, 2025)
    torch.testing.assert_close(model.forward_loss(gt, logits, token_all_mask), loss, rtol=1e-5, atol=1e-6)


def test_forward_decoder_as_gen_img_uncond_calls_it(model, images):
    """All 257 rows, an int64 zero drop mask and a bool mask: the logits of generation."""
    ids = model.tokenize(images)
    ids[:, 1::3] = MASK_ID
    tokens = torch.cat([torch.full((2, 1), model.fake_class_label), ids], 1)
    with torch.no_grad():
        x = model.token_emb(tokens)
        for blk in model.blocks:
            x = blk(x)
        logits = model.forward_decoder(model.norm(x), torch.zeros_like(tokens), tokens == model.mask_token_label)
        torch.testing.assert_close(logits[:, 1:, :1024], model.logits(ids), rtol=1e-5, atol=1e-5)


def test_official_tokenizer_interface(model, images):
    assert isinstance(model.vqgan, VQModel)
    image = images[:1]
    with torch.no_grad():
        ids = model.tokenize(image)
        z_q, loss, (_, _, flat) = model.vqgan.encode(image)
        assert torch.equal(flat, ids.reshape(-1)) and loss.dim() == 0
        entry = model.vqgan.quantize.get_codebook_entry(flat, shape=(1, 16, 16, 32))
        torch.testing.assert_close(entry, z_q)
        torch.testing.assert_close(model.vqgan.decode(entry).clamp(0, 1), model.detokenize(ids))


def test_mask_ratio_without_scipy_draws_one_numpy_uniform():
    draw = InverseCdfTruncnorm(0.5, 1.0, 0.55, 0.25)
    np.random.seed(3)
    ratios = draw.rvs(1000)
    after = np.random.uniform()
    np.random.seed(3)
    u = np.random.uniform(size=1000)
    assert np.random.uniform() == after  # one uniform per value, nothing else
    assert ratios.min() >= 0.5 and ratios.max() <= 1.0
    assert np.all(np.diff(ratios[np.argsort(u)]) >= 0)  # the inverse CDF is monotone in u
    # The truncated normal's mean: mu + std (phi(a) - phi(b)) / (Phi(b) - Phi(a)), a = -0.2, b = 1.8.
    def phi(x):
        return np.exp(-x * x / 2) / np.sqrt(2 * np.pi)

    def cdf(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))
    mean = 0.55 + 0.25 * (phi(-0.2) - phi(1.8)) / (cdf(1.8) - cdf(-0.2))
    assert abs(ratios.mean() - mean) < 4 * ratios.std() / np.sqrt(1000)


def test_scipy_absence_is_logged(caplog):
    try:
        import scipy  # noqa: F401
    except ImportError:
        with caplog.at_level(logging.WARNING, logger="mage_fast"):
            assert isinstance(mask_ratio_generator(0.5, 1.0, 0.55, 0.25), InverseCdfTruncnorm)
        assert "scipy is not installed" in caplog.text
    else:
        assert not isinstance(mask_ratio_generator(0.5, 1.0, 0.55, 0.25), InverseCdfTruncnorm)


def test_training_needs_a_positive_mask_ratio_min(images):
    model = compat_mage(mask_ratio_min=0.0)  # gen_img_uncond.py builds it so, for generation only
    with pytest.raises(ValueError, match="mask_ratio_min > 0"):
        model(images)


# ---------------------------------------------------------------- models_vit_mage
@pytest.mark.parametrize("global_pool", [True, False])
def test_finetune_model_keys_order_and_attributes(global_pool):
    with torch.device("meta"):
        model = models_vit_mage.vit_base_patch16(num_classes=1000, drop_path_rate=0.1, global_pool=global_pool,
                                                 vqgan_ckpt_path=None)
        ours = build_classifier("mage_vit_base_patch16", 1000, global_pool)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in ours.state_dict().items()]
    assert model.no_weight_decay() == {"pos_embed", "cls_token"} and model.patch_embed.num_patches == 196
    assert model.pos_embed.shape == (1, 197, 768) and len(model.blocks) == 12
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("vqgan."))
    assert model.blocks[-1].drop_path.p == pytest.approx(0.1)
    assert models_vit_mage.VisionTransformerMage(**VIT_SIZES, vqgan_ckpt_path=None).global_pool is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(img_size=256), "img_size, patch_size and in_chans"), (dict(num_classes=0), "num_classes must be >= 1"),
    (dict(qkv_bias=False), "qkv_bias must be True"), (dict(qk_scale=0.1), "qk_scale None"),
    (dict(drop_rate=0.1), "no dropout"), (dict(attn_drop_rate=0.1), "no dropout"),
    (dict(representation_size=64), "representation_size"), (dict(norm_layer=nn.Identity), "affine nn.LayerNorm"),
])
def test_finetune_model_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models_vit_mage.VisionTransformerMage(**VIT_SIZES, vqgan_ckpt_path=None, **kwargs)


def test_finetune_and_linear_probe_as_the_official_scripts_use_it(images):
    """A pretrained MAGE's state_dict loads with strict=False missing only the head and fc_norm
    (pos_embed brought to 197 rows as interpolate_pos_embed does); forward is head(forward_features);
    the linear probe's BatchNorm + head replacement runs."""
    torch.manual_seed(0)
    pretrained = mage_fast.MAGE(**SIZES, vqgan=TINY_TEST.vqgan).state_dict()
    with tiny_tokenizer():
        model = models_vit_mage.VisionTransformerMage(**VIT_SIZES, num_classes=10, global_pool=True,
                                                      vqgan_ckpt_path=None)
    grid = pretrained["pos_embed"][:, 1:].reshape(1, 16, 16, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(14, 14), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    pretrained["pos_embed"] = torch.cat([pretrained["pos_embed"][:, :1], grid], 1)
    msg = model.load_state_dict(pretrained, strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert torch.equal(model.blocks[1].attn.qkv.weight, pretrained["blocks.1.attn.qkv.weight"])
    model.eval()
    image = images[:1]
    with torch.no_grad():
        features = model.forward_features(image)
        torch.testing.assert_close(model(image), model.head(features), rtol=0, atol=0)
        model.head = nn.Sequential(nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
        model.eval()
        torch.testing.assert_close(model(image), model.head(features), rtol=0, atol=0)
