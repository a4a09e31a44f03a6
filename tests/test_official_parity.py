"""The reference and the fast module against the official code (LTH14/mage) on the same weights.

Needs a checkout of the official repository: MAGE_OFFICIAL_REPO=/path/to/mage, with
omegaconf, einops and scipy installed. Where timm or pytorch_lightning are missing, minimal
stand-ins take their place (MAGE uses only timm's PatchEmbed/Mlp/DropPath and Lightning's base
class), and on a machine without CUDA `.cuda()` becomes a no-op so the official forward runs.
Skipped when MAGE_OFFICIAL_REPO is not set.
"""
import argparse
import importlib
import os
import sys
import types
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import mage_fast
from mage_fast.configs import MASK_ID, MAGEConfig, VQGANConfig
from mage_fast.finetune import param_groups_lrd
from mage_fast.finetune.optim import layer_decay_optimizer
from mage_fast.recognition.classifier import IMPLEMENTATIONS, UNUSED_BY_CLASSIFIER, FastMAGEClassifier, build_classifier
from mage_fast.reference import MAGE, mage_vit_base_patch16
from mage_fast.runs import TrainOrder, freeze_unused, save_checkpoint

OFFICIAL = os.environ.get("MAGE_OFFICIAL_REPO")
pytestmark = pytest.mark.skipif(not OFFICIAL, reason="set MAGE_OFFICIAL_REPO to a checkout of LTH14/mage")
SIZES = dict(embed_dim=128, depth=2, num_heads=2, decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=2)


def _stand_ins():
    """Install minimal timm / pytorch_lightning modules where the real ones do not import."""
    try:
        importlib.import_module("timm.models.vision_transformer")
    except ImportError:
        class PatchEmbed(nn.Module):
            def __init__(self, img_size, patch_size, in_chans, embed_dim):
                super().__init__()
                self.num_patches = (img_size // patch_size) ** 2
                self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

        class Mlp(nn.Module):
            def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.0):
                super().__init__()
                self.fc1, self.act, self.drop1 = nn.Linear(in_features, hidden_features), act_layer(), nn.Dropout(drop)
                self.fc2, self.drop2 = nn.Linear(hidden_features, in_features), nn.Dropout(drop)

            def forward(self, x):
                return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))

        vit = types.ModuleType("timm.models.vision_transformer")
        vit.PatchEmbed, vit.Mlp, vit.DropPath = PatchEmbed, Mlp, nn.Identity
        for name in ("timm", "timm.models"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["timm.models.vision_transformer"] = vit
    try:
        importlib.import_module("pytorch_lightning")
    except ImportError:
        pl = types.ModuleType("pytorch_lightning")
        pl.LightningModule = nn.Module
        sys.modules["pytorch_lightning"] = pl


@pytest.fixture(scope="module")
def official():
    pytest.importorskip("omegaconf")
    pytest.importorskip("einops")
    pytest.importorskip("scipy")
    _stand_ins()
    if not hasattr(np, "float"):  # util/pos_embed.py predates NumPy 1.24
        np.float = float
    saved_cuda, cwd = torch.Tensor.cuda, os.getcwd()
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    sys.path.insert(0, OFFICIAL)
    os.chdir(OFFICIAL)  # the official model reads config/vqgan.yaml relative to the cwd
    try:
        yield importlib.import_module("models_mage")
    finally:
        os.chdir(cwd)
        sys.path.remove(OFFICIAL)
        torch.Tensor.cuda = saved_cuda


@pytest.fixture(scope="module", params=[MAGE, mage_fast.MAGE], ids=["reference", "fast"])
def pair(official, request):
    torch.manual_seed(0)
    theirs = official.MaskedGenerativeEncoderViT(
        **SIZES, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), vqgan_ckpt_path=None).eval()
    with torch.no_grad():  # a spread-out codebook, so tokenization is a real test
        theirs.vqgan.quantize.embedding.weight.normal_()
    ours = request.param(**SIZES, vqgan=VQGANConfig()).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def test_base_model_keys_and_shapes(official):
    theirs = official.mage_vit_base_patch16(vqgan_ckpt_path=None).state_dict()
    with torch.device("meta"):
        ours = mage_vit_base_patch16().state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_tokenize_and_detokenize(pair, images):
    theirs, ours = pair
    with torch.no_grad():
        z_q, _, (_, _, ids) = theirs.vqgan.encode(images)
        ids = ids.reshape(images.shape[0], -1)
        assert torch.equal(ours.tokenize(images), ids)
        z = theirs.vqgan.quantize.get_codebook_entry(ids.reshape(-1), shape=(2, 16, 16, 256))
        torch.testing.assert_close(ours.detokenize(ids), theirs.vqgan.decode(z).clamp(0, 1), rtol=1e-5, atol=1e-6)


def test_generation_logits(pair, images):
    """One step of gen_img_uncond.py's forward, on ids with some positions masked."""
    theirs, ours = pair
    ids = ours.tokenize(images)
    ids[:, ::3] = MASK_ID
    with torch.no_grad():
        tokens = torch.cat([torch.full((2, 1), theirs.fake_class_label), ids], 1)
        x = theirs.token_emb(tokens)
        for blk in theirs.blocks:
            x = blk(x)
        x = theirs.norm(x)
        expected = theirs.forward_decoder(x, torch.zeros_like(tokens), tokens == theirs.mask_token_label)
        torch.testing.assert_close(ours.logits(ids), expected[:, 1:, :1024], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.5, 0.71, 1.0])
def test_training_loss_and_gradients(pair, images, monkeypatch, ratio):
    theirs, ours = pair
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(int(ratio * 100)))
    monkeypatch.setattr(theirs, "mask_ratio_generator", types.SimpleNamespace(rvs=lambda n: [ratio]))
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: noise.clone())
    theirs.zero_grad(set_to_none=True)
    expected = theirs(images)[0]
    expected.backward()
    monkeypatch.undo()
    ours.zero_grad(set_to_none=True)
    loss = ours(images, mask_ratio=ratio, noise=noise)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        if p.grad is None:
            assert grads[name].grad is None, name
        else:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- the fine-tuning model
# timm 0.3.2 (the official code's pin) has no fc_norm: the official subclass adds it after the
# head. Newer timm registers an Identity fc_norm before the head, which the subclass's LayerNorm
# replaces in place, and a few parameterless modules. This is 0.3.2's order of the submodules.
TIMM_032_ORDER = ("patch_embed", "pos_drop", "blocks", "norm", "head", "fc_norm", "vqgan", "token_emb")


@pytest.fixture(scope="module")
def official_vit(official):
    """models_vit_mage, which subclasses timm's real VisionTransformer (no stand-in will do)."""
    if not hasattr(sys.modules.get("timm.models.vision_transformer"), "VisionTransformer"):
        pytest.skip("the official fine-tuning model needs timm installed")
    return importlib.import_module("models_vit_mage")


def official_classifier(official_vit, global_pool, base=False, **kwargs):
    sizes = {} if base else dict(embed_dim=SIZES["embed_dim"], depth=SIZES["depth"], num_heads=SIZES["num_heads"],
                                 mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    build = official_vit.vit_base_patch16 if base else official_vit.VisionTransformerMage
    model = build(global_pool=global_pool, vqgan_ckpt_path=None, **sizes, **kwargs)
    order = [n for n in TIMM_032_ORDER if n in model._modules] + [n for n in model._modules if n not in TIMM_032_ORDER]
    model._modules = type(model._modules)((n, model._modules[n]) for n in order)
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["global_pool", "cls_token"])
def finetune_pair(official_vit, request):
    torch.manual_seed(0)
    theirs = official_classifier(official_vit, request.param, num_classes=10, drop_path_rate=0.1).eval()
    with torch.no_grad():
        theirs.vqgan.quantize.embedding.weight.normal_()
    return theirs, request.param


def tiny_classifier(cls, global_pool):
    cfg = MAGEConfig(SIZES["embed_dim"], SIZES["depth"], SIZES["num_heads"], 1, 1, 1, vqgan=VQGANConfig())
    return cls(cfg, 10, global_pool, drop_path=0.1)


@pytest.mark.parametrize("global_pool", [True, False])
def test_finetune_model_keys_order_and_shapes(official_vit, global_pool):
    theirs = official_classifier(official_vit, global_pool, base=True, num_classes=1000).state_dict()
    with torch.device("meta"):
        ours = build_classifier("mage_vit_base_patch16", 1000, global_pool).state_dict()
    assert [(k, tuple(v.shape)) for k, v in theirs.items()] == [(k, tuple(v.shape)) for k, v in ours.items()]


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_finetune_logits_and_gradients(finetune_pair, images, impl):
    """On the same weights, eval mode, fp32: the official head(forward_features(x)) (timm 0.3.2's
    forward; newer timm's forward_head would pool the pooled features again)."""
    theirs, global_pool = finetune_pair
    ours = tiny_classifier(IMPLEMENTATIONS[impl], global_pool).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    weights = torch.randn(2, 10, generator=torch.Generator().manual_seed(1))
    theirs.zero_grad(set_to_none=True)
    expected = theirs.head(theirs.forward_features(images))
    (expected * weights).sum().backward()
    got = ours(images)
    (got * weights).sum().backward()
    print(f"\n{impl} {'global pool' if global_pool else 'class token'}: max |logit error| "
          f"{(got - expected).abs().max().item():.3e} (logits up to {expected.abs().max().item():.3e})")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        if grads[name].grad is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_layer_decay_groups_are_the_official_ones(finetune_pair, official):
    """util/lr_decay.param_groups_lrd on the official model and ours: the same groups, in the
    same order, with the same parameters (by name), scales and weight decay."""
    lrd = importlib.import_module("util.lr_decay")
    theirs, global_pool = finetune_pair
    expected = lrd.param_groups_lrd(theirs, 0.05, no_weight_decay_list=theirs.no_weight_decay(), layer_decay=0.65)
    ours = tiny_classifier(FastMAGEClassifier, global_pool)
    freeze_unused(ours, UNUSED_BY_CLASSIFIER)   # as fine-tuning runs it: still listed
    got = param_groups_lrd(ours, 0.05, 0.65)

    def named(groups, model):
        name = {id(p): n for n, p in model.named_parameters()}
        return [(g["lr_scale"], g["weight_decay"], [name[id(p)] for p in g["params"]]) for g in groups]
    assert named(got, ours) == named(expected, theirs)


def test_official_resume_loads_our_checkpoint(finetune_pair, official, images, tmp_path):
    """One step of ours, saved as `mage-fast finetune` saves it; then the official misc.load_model:
    the model strictly, the optimizer into AdamW over the official groups, each parameter's state
    on the parameter of the same name."""
    lrd = importlib.import_module("util.lr_decay")
    theirs, global_pool = finetune_pair
    ours = tiny_classifier(FastMAGEClassifier, global_pool).train()
    ours.load_state_dict(theirs.state_dict())
    freeze_unused(ours, UNUSED_BY_CLASSIFIER)
    optimizer = layer_decay_optimizer(ours, 1e-3, 0.05, 0.65)
    ours(images).logsumexp(1).mean().backward()
    optimizer.step()
    path = tmp_path / "ckpt.pth"
    save_checkpoint(str(path), ours, optimizer, torch.amp.GradScaler("cpu", enabled=False), argparse.Namespace(),
                    TrainOrder(2, 1, 1, 0), 1)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    theirs.load_state_dict(ckpt["model"])
    official_optimizer = torch.optim.AdamW(lrd.param_groups_lrd(theirs, 0.05, theirs.no_weight_decay(), 0.65),
                                           lr=1e-3, betas=(0.9, 0.999))
    official_optimizer.load_state_dict(ckpt["optimizer"])
    name = {id(p): n for n, p in theirs.named_parameters()}
    mine = {n: optimizer.state[p] for n, p in ours.named_parameters() if p in optimizer.state}
    landed = {name[id(p)]: s for p, s in official_optimizer.state.items()}
    assert landed.keys() == mine.keys() and len(mine) > 0
    assert not any(n.startswith(UNUSED_BY_CLASSIFIER) for n in landed)
    for n, s in landed.items():
        torch.testing.assert_close(s["exp_avg"], mine[n]["exp_avg"], rtol=0, atol=0, msg=n)
    assert len(param_groups_lrd(ours, 0.05, 0.65)) == len(official_optimizer.param_groups)
