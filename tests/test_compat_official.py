"""mage_fast.compat against the official modules (LTH14/mage) on the same weights, through the
official scripts' own functions: engine_pretrain.train_one_epoch, gen_img_uncond.gen_image,
util/lr_decay.param_groups_lrd, util/pos_embed.interpolate_pos_embed.

Needs MAGE_OFFICIAL_REPO, as test_official_parity.py (whose fixtures import the official code),
and timm for the fine-tuning model. Every dropout probability is set to 0 on both sides (the
official forward trains with dropout 0.1, whose draws no other implementation can repeat), so
training runs draw only the mask ratio (numpy) and the noise (torch), as the official order
does. Both sides use a small tokenizer (the official VQModel built at the tiny test widths), so a
test takes seconds: the full one is compared in test_official_parity.py.
"""
# ruff: noqa: F811 (the official fixtures, imported from test_official_parity, are test parameters)
import argparse
import ast
import importlib
import math
import sys
import types
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from mage_fast.compat import models_mage, models_vit_mage
from mage_fast.compat.mask_ratio import InverseCdfTruncnorm
from mage_fast.compat.tokenizer import VQModel
from mage_fast.configs import TINY_TEST, VQGANConfig
from mage_fast.reference.vqgan import VQGAN
from test_official_parity import OFFICIAL, SIZES, official, official_classifier, official_vit  # noqa: F401

pytestmark = pytest.mark.skipif(not OFFICIAL, reason="set MAGE_OFFICIAL_REPO to a checkout of LTH14/mage")
# The tiny test tokenizer, with the official latent width (gen_image assumes 256 channels).
VQ = VQGANConfig(ch=TINY_TEST.vqgan.ch, num_res_blocks=TINY_TEST.vqgan.num_res_blocks, z_channels=256)


def official_tokenizer():
    """The official VQModel at the tiny test sizes (MaskGIT's architecture: no attention)."""
    from taming.models.vqgan import VQModel as OfficialVQModel
    ddconfig = dict(double_z=False, z_channels=VQ.z_channels, resolution=256, in_channels=3, out_ch=3, ch=VQ.ch,
                    ch_mult=list(VQ.ch_mult), num_res_blocks=VQ.num_res_blocks, attn_resolutions=[16], dropout=0.0)
    tokenizer = OfficialVQModel(ddconfig=ddconfig, n_embed=VQ.codebook_size, embed_dim=VQ.z_channels)
    with torch.no_grad():  # a spread-out codebook, so tokenization is a real test
        tokenizer.quantize.embedding.weight.normal_()
    return tokenizer.requires_grad_(False)


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def seeded(fn, seed):
    np.random.seed(seed)
    torch.manual_seed(seed)
    return fn()


@pytest.fixture
def mage_pair(official):
    """(official, compat) MAGE at the test sizes, the same weights, dropout 0, training mode."""
    torch.manual_seed(0)
    theirs = official.MaskedGenerativeEncoderViT(**SIZES, vqgan_ckpt_path=None)
    theirs.vqgan = official_tokenizer()
    ours = models_mage.MaskedGenerativeEncoderViT(**SIZES, vqgan_ckpt_path=None)
    ours.vqgan = VQModel(VQ).requires_grad_(False)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return no_dropout(theirs), no_dropout(ours)


def test_keys_order_and_shapes(official):
    theirs = official.mage_vit_base_patch16(vqgan_ckpt_path=None)
    with torch.device("meta"):
        ours = models_mage.mage_vit_base_patch16(vqgan_ckpt_path=None)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    assert [(k, p.requires_grad) for k, p in ours.named_parameters()] == \
        [(k, p.requires_grad) for k, p in theirs.named_parameters()]
    assert {m.eps for m in ours.modules() if isinstance(m, nn.LayerNorm)} == \
        {m.eps for m in theirs.modules() if isinstance(m, nn.LayerNorm)}


def test_mask_ratio_generator_is_scipys(official):
    """With scipy installed the compat model holds scipy's truncnorm, as the official; the
    inverse-CDF draw used without scipy gives its values within 1e-12 and the same counts."""
    pytest.importorskip("scipy")
    kwargs = dict(mask_ratio_min=0.5, mask_ratio_max=1.0, mask_ratio_mu=0.55, mask_ratio_std=0.25)
    ours = models_mage.MaskedGenerativeEncoderViT(**SIZES, **kwargs, vqgan_ckpt_path=None).mask_ratio_generator
    expected = seeded(lambda: official.MaskedGenerativeEncoderViT(**SIZES, **kwargs, vqgan_ckpt_path=None)
                      .mask_ratio_generator.rvs(20000), 0)
    assert np.array_equal(seeded(lambda: ours.rvs(20000), 0), expected)
    fallback = seeded(lambda: InverseCdfTruncnorm(0.5, 1.0, 0.55, 0.25).rvs(20000), 0)
    print(f"\ninverse-CDF draw vs scipy: max |difference| {np.abs(fallback - expected).max():.2e}")
    assert np.abs(fallback - expected).max() < 1e-12
    assert np.array_equal(np.ceil(256 * fallback), np.ceil(256 * expected))


def test_forward_loss_mask_and_gradients(mage_pair, images):
    """forward(imgs) twice in a row on the same global random state (the second step draws
    from where the first left both generators), then the second loss's gradients."""
    results = []
    for model in mage_pair:
        model.zero_grad(set_to_none=True)
        np.random.seed(0)
        torch.manual_seed(0)
        results.append([model(images) for _ in range(2)])
        results[-1][-1][0].backward()
    for (loss, imgs, mask), (want, _, want_mask) in zip(results[1], results[0]):
        assert imgs is images and mask.dtype == want_mask.dtype and torch.equal(mask, want_mask)
        print(f"\nloss {want.item():.6f}: |difference| {(loss - want).abs().item():.2e}")
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(results[0][0][2], results[0][1][2])  # the second step masked others
    theirs, ours = mage_pair
    grads = dict(theirs.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        if p.grad is None:
            assert grads[name].grad is None, name
        else:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
            worst = max(worst, ((p.grad - grads[name].grad).abs().max() / grads[name].grad.abs().max()).item())
    print(f"gradients: max |difference| / max |gradient| {worst:.2e}")


def test_encoder_decoder_and_loss(mage_pair, images):
    theirs, ours = mage_pair
    expected = seeded(lambda: theirs.forward_encoder(images), 3)
    got = seeded(lambda: ours.forward_encoder(images), 3)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[1:], expected[1:]):  # gt_indices, token_drop_mask, token_all_mask
        assert a.dtype == b.dtype and torch.equal(a, b)
    latent, _, drop, mask = expected
    logits, want = ours.forward_decoder(latent, drop, mask), theirs.forward_decoder(latent, drop, mask)
    print(f"\nlogits: max |difference| {(logits - want).abs().max().item():.2e}")
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.forward_loss(expected[1], want, expected[3]),
                               theirs.forward_loss(expected[1], want, expected[3]), rtol=1e-6, atol=1e-7)


def gen_img_uncond():
    """gen_img_uncond.py's functions (the file runs the whole generation when imported)."""
    source = open(f"{OFFICIAL}/gen_img_uncond.py").read()
    tree = ast.parse(source)
    tree.body = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    namespace = dict(torch=torch, np=np, math=math)
    exec(compile(tree, "gen_img_uncond.py", "exec"), namespace)
    return types.SimpleNamespace(**namespace)


def test_gen_image_ids(mage_pair, monkeypatch):
    """The official gen_image with its per-batch seeding, on both models in eval mode (fp32,
    CPU): the same token ids at the end (captured where it looks them up in the codebook),
    and the same images within round-off."""
    script = gen_img_uncond()
    results = {}
    for side, model in zip(("theirs", "ours"), mage_pair):
        model.eval()
        ids = []

        def recording(indices, shape, lookup=model.vqgan.quantize.get_codebook_entry, ids=ids):
            ids.append(indices)
            return lookup(indices, shape)
        monkeypatch.setattr(model.vqgan.quantize, "get_codebook_entry", recording)
        with torch.no_grad():
            images = [script.gen_image(model, bsz=2, seed=seed, num_iter=6, choice_temperature=4.5) for seed in (0, 1)]
        results[side] = ids, images
    assert len(results["ours"][0]) == 2 and not torch.equal(*results["ours"][0])
    for got, want in zip(results["ours"][0], results["theirs"][0]):
        assert torch.equal(got, want)
    for got, want in zip(results["ours"][1], results["theirs"][1]):
        print(f"\ngen_image: max |image difference| {(got - want).abs().max().item():.2e}")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- models_vit_mage
@pytest.fixture(params=[True, False], ids=["global_pool", "cls_token"])
def vit_pair(official_vit, request):
    """(official, compat) fine-tuning models, as main_finetune.py builds them at the test sizes:
    the same initial weights, then a pretrained MAGE's state_dict loaded as the script loads it
    (interpolate_pos_embed, strict=False, the missing keys asserted), eval mode."""
    interpolate_pos_embed = importlib.import_module("util.pos_embed").interpolate_pos_embed
    torch.manual_seed(0)
    sizes = dict(embed_dim=SIZES["embed_dim"], depth=SIZES["depth"], num_heads=SIZES["num_heads"], mlp_ratio=4,
                 qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    theirs = official_classifier(official_vit, request.param, num_classes=10, drop_path_rate=0.1)
    ours = models_vit_mage.VisionTransformerMage(global_pool=request.param, vqgan_ckpt_path=None, num_classes=10,
                                                 drop_path_rate=0.1, **sizes)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    checkpoint = models_mage.MaskedGenerativeEncoderViT(**SIZES, vqgan_ckpt_path=None).state_dict()
    missing = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if request.param else set())
    for model in (theirs, ours):
        state = dict(checkpoint)
        interpolate_pos_embed(model, state)
        assert state["pos_embed"].shape == (1, 197, SIZES["embed_dim"])
        assert set(model.load_state_dict(state, strict=False).missing_keys) == missing
    theirs.vqgan, ours.vqgan = official_tokenizer(), VQGAN(VQ).requires_grad_(False)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs.eval(), ours.eval()


def test_finetune_logits_and_features(vit_pair, images):
    """forward_features and the logits, eval mode (no drop path), fp32; the official forward is
    head(forward_features(x)) as timm 0.3.2's (newer timm's forward_head would pool twice)."""
    theirs, ours = vit_pair
    with torch.no_grad():
        features, want = ours.forward_features(images), theirs.forward_features(images)
        logits = ours(images)
        expected = theirs.head(want)
    print(f"\nfeatures: max |difference| {(features - want).abs().max().item():.2e}; "
          f"logits: {(logits - expected).abs().max().item():.2e}")
    torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_layer_decay_groups(vit_pair, official):
    """util/lr_decay.param_groups_lrd over each model with its own no_weight_decay(), as
    main_finetune.py calls it: the same groups in the same order, by parameter name."""
    lrd = importlib.import_module("util.lr_decay")

    def named(model):
        name = {id(p): n for n, p in model.named_parameters()}
        groups = lrd.param_groups_lrd(model, 0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.65)
        return [(g["lr_scale"], g["weight_decay"], [name[id(p)] for p in g["params"]]) for g in groups]
    theirs, ours = vit_pair
    assert named(ours) == named(theirs)


# ---------------------------------------------------------------- engine_pretrain.train_one_epoch
def weight_decay_groups(model, weight_decay=0.05):
    """main_pretrain.py's groups (timm's add_weight_decay): no decay on biases and 1-d tensors."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in trained if p.ndim <= 1 or n.endswith(".bias")], "weight_decay": 0.0},
            {"params": [p for n, p in trained if not (p.ndim <= 1 or n.endswith(".bias"))],
             "weight_decay": weight_decay}]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_train_one_epoch(mage_pair, images, monkeypatch, optimizer):
    """engine_pretrain.train_one_epoch, three iterations on a loader of three one-image
    batches, from the same numpy and torch seeds, with the official loss scaler (a no-op without
    CUDA): the loss of every iteration and every weight after the steps. With SGD the weights
    move by lr x gradient, so they agree to round-off. With main_pretrain.py's AdamW an element
    whose gradient is itself round-off (the attention's key biases have a zero true gradient)
    moves by up to +-lr per step whatever its size: those are bounded by 2 lr per step, the rest
    held to round-off."""
    monkeypatch.setitem(sys.modules, "torch._six", types.SimpleNamespace(inf=math.inf))  # util/misc.py's torch 1
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    engine, misc = importlib.import_module("engine_pretrain"), importlib.import_module("util.misc")
    args = argparse.Namespace(accum_iter=1, grad_clip=None, lr=1e-3, min_lr=1e-4, warmup_epochs=0, epochs=2)
    label = torch.zeros(1, dtype=torch.long)
    loader = [(images[:1], label), (images[1:], label), (1 - images[:1], label)]
    losses = []
    for model in mage_pair:
        losses.append([])
        hook = model.register_forward_hook(lambda m, i, out, seen=losses[-1]: seen.append(out[0].item()))
        groups = weight_decay_groups(model)
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95)) if optimizer == "adamw" else \
            torch.optim.SGD(groups, lr=args.lr)
        np.random.seed(0)
        torch.manual_seed(0)
        engine.train_one_epoch(model, loader, opt, torch.device("cpu"), 0, misc.NativeScalerWithGradNormCount(),
                               args=args)
        hook.remove()
    print(f"\n{optimizer}: losses {losses[0]}: max |difference| {np.abs(np.subtract(*losses)).max():.2e}")
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    theirs, ours = (dict(m.named_parameters()) for m in mage_pair)
    differences = torch.cat([(ours[n] - p).detach().abs().flatten() for n, p in theirs.items()])
    print(f"weights after the steps: max |difference| {differences.max().item():.2e}, "
          f"{(differences > 1e-6).sum().item()} of {differences.numel()} above 1e-6")
    if optimizer == "sgd":
        for name, p in theirs.items():
            torch.testing.assert_close(ours[name], p, rtol=1e-5, atol=1e-7, msg=name)
    else:
        assert differences.max() <= 2 * args.lr * len(loader)
        assert (differences > 1e-6).float().mean() < 1e-3
