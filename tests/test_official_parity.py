"""The reference and the fast module against the official code (LTH14/mage) on the same weights.

Needs a checkout of the official repository: MAGE_OFFICIAL_REPO=/path/to/mage, with
omegaconf, einops and scipy installed. Where timm or pytorch_lightning are missing, minimal
stand-ins take their place (MAGE uses only timm's PatchEmbed/Mlp/DropPath and Lightning's base
class), and on a machine without CUDA `.cuda()` becomes a no-op so the official forward runs.
Skipped when MAGE_OFFICIAL_REPO is not set.
"""
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
from mage_fast.configs import MASK_ID, VQGANConfig
from mage_fast.reference import MAGE, mage_vit_base_patch16

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
