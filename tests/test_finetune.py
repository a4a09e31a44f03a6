"""Fine-tuning (`mage-fast finetune`, `mage-fast evaluate`): the classifier's official keys and its
fast path against the reference, the layer-wise lr decay, the evaluation transform, pretraining
checkpoints loaded the official way, and short CPU runs of both commands: above chance, official
checkpoints, exact resume, resumable evaluation; the official recipe kept at ImageNet's size and
the small-set recipe, which learns at its defaults. Without timm (the mage-fast[finetune] extra):
mixup, cutmix and RandAugment off; tests/test_finetune_timm.py covers them."""
import argparse
import json
import math
import os
import shutil
import signal
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import rel_err
from mage_fast.cli import main
from mage_fast.configs import TINY_TEST, MAGEConfig, VQGANConfig
from mage_fast.data import EvalTransform
from mage_fast.distributed import Dist
from mage_fast.finetune import FinetuneConfig, config_for, eval_transform, load_pretrained, loop, param_groups_lrd
from mage_fast.finetune.samples import Objective, require_timm
from mage_fast.finetune.small_set import for_training_set
from mage_fast.recognition.classifier import UNUSED_BY_CLASSIFIER, FastMAGEClassifier, MAGEClassifier, build_classifier
from mage_fast.reference import mage_vit_tiny_test
from mage_fast.runs import freeze_unused
from mage_fast.runs.progress import Progress
from test_training import assert_same_state

TINY = ["--model", "mage_vit_tiny_test", "--device", "cpu", "--workers", "0", "--log-every", "1"]
NO_TIMM = ["--mixup", "0", "--cutmix", "0", "--aa", "none"]
COLOURS = {"blue": (40, 40, 200), "red": (200, 40, 40)}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- the official model's keys
def official_vqgan_keys(cfg: VQGANConfig):
    """The tokenizer's keys in the official taming modules (MAGE's VQModel, converted from
    MaskGIT): no attention, average-pool downsampling, a 1x1 shortcut where a stage widens."""
    def resnet(prefix, widens):
        keys = [f"{prefix}.{k}" for k in ("norm1.weight", "norm1.bias", "conv1.weight", "norm2.weight",
                                           "norm2.bias", "conv2.weight")]
        return keys + ([f"{prefix}.nin_shortcut.weight"] if widens else [])

    widths = [cfg.ch * m for m in cfg.ch_mult]
    keys, c_in = ["encoder.conv_in.weight"], cfg.ch
    for i, w in enumerate(widths):
        for j in range(cfg.num_res_blocks):
            keys += resnet(f"encoder.down.{i}.block.{j}", j == 0 and c_in != w)
        c_in = w
    keys += resnet("encoder.mid.block_1", False) + resnet("encoder.mid.block_2", False)
    keys += ["encoder.norm_out.weight", "encoder.norm_out.bias", "encoder.conv_out.weight", "encoder.conv_out.bias"]
    keys += ["decoder.conv_in.weight", "decoder.conv_in.bias"]
    keys += resnet("decoder.mid.block_1", False) + resnet("decoder.mid.block_2", False)
    for i in range(len(widths)):  # up[i] mirrors down[i]; the decoder enters it from up[i + 1]
        c_in = widths[min(i + 1, len(widths) - 1)]
        for j in range(cfg.num_res_blocks):
            keys += resnet(f"decoder.up.{i}.block.{j}", j == 0 and c_in != widths[i])
        if i:
            keys += [f"decoder.up.{i}.upsample.conv.weight", f"decoder.up.{i}.upsample.conv.bias"]
    keys += ["decoder.norm_out.weight", "decoder.norm_out.bias", "decoder.conv_out.weight", "decoder.conv_out.bias"]
    return ["vqgan." + k for k in keys + ["quantize.embedding.weight"]]


def official_finetune_keys(cfg: MAGEConfig, global_pool: bool):
    """The state_dict of the official models_vit_mage model, in order: timm 0.3.2's
    VisionTransformer (its own cls_token and pos_embed, then patch_embed, blocks, norm, head), the
    subclass's fc_norm (global pool, which deletes norm), its tokenizer and token embedding."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    keys += [f"blocks.{i}.{k}" for i in range(cfg.depth) for k in block]
    keys += ["head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"] if global_pool else \
        ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    keys += official_vqgan_keys(cfg.vqgan)
    return keys + ["token_emb.position_ids", "token_emb.word_embeddings.weight",
                   "token_emb.position_embeddings.weight", "token_emb.LayerNorm.weight", "token_emb.LayerNorm.bias"]


@pytest.mark.parametrize("global_pool", [True, False])
@pytest.mark.parametrize("name", ["mage_vit_tiny_test", "mage_vit_base_patch16"])
def test_state_dict_is_the_official_key_list(name, global_pool):
    from mage_fast.configs import CONFIGS
    with torch.device("meta"):
        model = build_classifier(name, 1000, global_pool)
    keys = official_finetune_keys(CONFIGS[name], global_pool)
    state = model.state_dict()
    assert list(state) == keys
    dim = CONFIGS[name].embed_dim
    assert state["pos_embed"].shape == (1, 197, dim) and state["cls_token"].shape == (1, 1, dim)
    assert state["patch_embed.proj.weight"].shape == (dim, 3, 16, 16) and state["head.weight"].shape == (1000, dim)
    assert state["token_emb.word_embeddings.weight"].shape == (2025, dim)
    # What an official fine-tuned checkpoint holds loads strictly into either implementation.
    official = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}
    if name == "mage_vit_tiny_test":
        for cls in (MAGEClassifier, FastMAGEClassifier):
            cls(CONFIGS[name], 1000, global_pool).load_state_dict(official, strict=True)


def test_the_key_list_matches_the_pretraining_models_tokenizer():
    """The written-out tokenizer keys are those of the MAGE model (whose checkpoints are official)."""
    with torch.device("meta"):
        mage = mage_vit_tiny_test().state_dict()
    assert [k for k in mage if k.startswith("vqgan.")] == official_vqgan_keys(TINY_TEST.vqgan)


# ---------------------------------------------------------------- the model
def test_fast_classifier_matches_the_reference(images, monkeypatch):
    """Same weights: the same tokens, and logits and every gradient to fp32 round-off, in eval
    mode and with drop path and dropout (train mode), whose masks the same seed draws alike.
    On CUDA through the kernels; on CPU through their PyTorch formulations (the kernels, under
    the interpreter, are tested in the same use by test_model.py)."""
    images = images.to(DEVICE)
    torch.manual_seed(0)
    ref = MAGEClassifier(TINY_TEST, 5, drop_path=0.3)
    with torch.no_grad():
        ref.head.weight.normal_()                        # logits of size 1, not 2e-5
        ref.vqgan.quantize.embedding.weight.normal_()    # a spread-out codebook: no near-ties
    fast = FastMAGEClassifier(TINY_TEST, 5, drop_path=0.3)
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.to(DEVICE), fast.to(DEVICE)
    with torch.no_grad():
        ids = ref._tokenize(images)
        assert torch.equal(fast._tokenize(images), ids)
    for m in (ref, fast):   # tokenized once: the forwards below differ only after the tokenizer
        monkeypatch.setattr(m, "_tokenize", lambda _images: ids)
    for train in (False, True):
        outs = []
        for m in (ref, fast):
            m.train(train).zero_grad(set_to_none=True)
            torch.manual_seed(1)
            out = m(images)
            out.square().sum().backward()
            outs.append((out, dict(m.named_parameters())))
        (want, ref_params), (got, fast_params) = outs
        assert rel_err(got, want) < 1e-5, train
        for name, p in ref_params.items():
            if p.grad is None:
                assert fast_params[name].grad is None, name
            else:
                assert rel_err(fast_params[name].grad, p.grad) < 1e-4, (name, train)
    assert rel_err(outs[0][0], ref.eval()(images)) > 1e-3      # train mode did drop paths


def test_drop_path_follows_timm():
    """Stochastic depth: rates rise linearly over the blocks; a sample's branch is dropped with
    probability p and the kept ones scaled by 1/(1-p); nothing in eval mode."""
    model = MAGEClassifier(TINY_TEST, 2, drop_path=0.2)
    assert [b.drop_path.p if hasattr(b.drop_path, "p") else 0.0 for b in model.blocks] == [0.0, pytest.approx(0.2)]
    drop = model.blocks[1].drop_path.train()
    x = torch.ones(20000, 3, 4)
    y = drop(x)
    kept = y[:, 0, 0] != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.8))
    assert abs(kept.float().mean().item() - 0.8) < 0.02
    assert torch.equal(drop.eval()(x), x)


# ---------------------------------------------------------------- the recipe's pieces
def expected_groups(depth, global_pool, decay=0.65, wd=0.05):
    """The official param_groups_lrd on the official model, written out: one group per (layer
    id, decay or not) in the order first met, scale decay ** (depth + 1 - layer)."""
    block_no_decay = ["norm1.weight", "norm1.bias", "attn.qkv.bias", "attn.proj.bias", "norm2.weight", "norm2.bias",
                      "mlp.fc1.bias", "mlp.fc2.bias"]
    block_decay = ["attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
    top = depth + 1
    groups = [(decay ** top, 0.0, ["cls_token", "pos_embed", "patch_embed.proj.bias", "token_emb.LayerNorm.weight",
                                   "token_emb.LayerNorm.bias"]),
              (decay ** top, wd, ["patch_embed.proj.weight", "token_emb.word_embeddings.weight",
                                  "token_emb.position_embeddings.weight"])]
    for i in range(depth):
        groups += [(decay ** (top - i - 1), 0.0, [f"blocks.{i}.{k}" for k in block_no_decay]),
                   (decay ** (top - i - 1), wd, [f"blocks.{i}.{k}" for k in block_decay])]
    if global_pool:
        return groups + [(1.0, wd, ["head.weight"]), (1.0, 0.0, ["head.bias", "fc_norm.weight", "fc_norm.bias"])]
    return groups + [(1.0, 0.0, ["norm.weight", "norm.bias", "head.bias"]), (1.0, wd, ["head.weight"])]


@pytest.mark.parametrize("global_pool", [True, False])
def test_layer_decay_groups_follow_the_official_rule(global_pool):
    model = MAGEClassifier(TINY_TEST, 3, global_pool)
    freeze_unused(model, UNUSED_BY_CLASSIFIER)    # as fine-tuning runs: the unused stay listed, the tokenizer not
    groups = param_groups_lrd(model, 0.05, 0.65)
    name = {id(p): n for n, p in model.named_parameters()}
    got = [(g["lr_scale"], g["weight_decay"], [name[id(p)] for p in g["params"]]) for g in groups]
    assert got == [(pytest.approx(s), wd, names) for s, wd, names in expected_groups(TINY_TEST.depth, global_pool)]


def test_recipe_defaults_and_bad_settings():
    b = config_for("mage_vit_base_patch16", data="d", val="v", out="o")
    assert (b.epochs, b.layer_decay, b.drop_path, b.blr, b.warmup_epochs, b.min_lr) == (100, 0.65, 0.1, 2.5e-4, 5, 1e-6)
    assert (b.mixup, b.cutmix, b.mixup_switch_prob, b.smoothing, b.aa) == (0.8, 1.0, 0.5, 0.1, "rand-m9-mstd0.5-inc1")
    large = config_for("mage_vit_large_patch16", data="d", val="v", out="o")
    assert (large.epochs, large.layer_decay, large.drop_path) == (50, 0.75, 0.2)
    assert config_for("mage_vit_large_patch16", data="d", val="v", out="o", epochs=10).epochs == 10
    with pytest.raises(ValueError, match="batch_size must be even"):
        FinetuneConfig("d", "v", "o", batch_size=3, small_set=0)
    with pytest.raises(ValueError, match=r"layer_decay must be a finite number in \(0, 1\].*drop_path must be a finite "
                                         r"number in \[0, 1\)"):
        FinetuneConfig("d", "v", "o", layer_decay=0, drop_path=1.0)
    with pytest.raises(ValueError, match="blr must be a finite number > 0"):
        FinetuneConfig("d", "v", "o", blr=math.inf)


IMAGENET = 1_281_167


@pytest.mark.parametrize("model", ["mage_vit_base_patch16", "mage_vit_large_patch16"])
def test_imagenet_keeps_the_official_recipe(model):
    cfg = config_for(model, data="d", val="v", out="o")
    for images, world in ((IMAGENET, 32), (1000, 1)):
        ran, line = for_training_set(cfg, images, world)
        assert ran is cfg and line.startswith("the official recipe")
    assert (cfg.batch_size, cfg.accum_iter, cfg.blr, cfg.lr, cfg.warmup_epochs) == (32, 1, 2.5e-4, None, 5)
    assert (cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.smoothing) == (0.8, 1.0, 1.0, 0.1)
    assert cfg.aa == "rand-m9-mstd0.5-inc1"
    assert cfg.small_set == 1000 and cfg.fixed == ("data", "out", "val")
    ran, _ = for_training_set(config_for(model, data="d", val="v", out="o", small_set=0), 16)
    assert (ran.batch_size, ran.lr, ran.warmup_epochs, ran.aa) == (32, None, 5, "rand-m9-mstd0.5-inc1")
    with pytest.raises(ValueError, match="warmup_epochs must be in"):  # as the official run refuses it
        for_training_set(config_for(model, data="d", val="v", out="o", epochs=3), IMAGENET)


def test_small_sets_adapt_what_was_not_given():
    ran, line = for_training_set(config_for("mage_vit_base_patch16", data="d", val="v", out="o", epochs=8), 16)
    assert (ran.batch_size, ran.lr, ran.warmup_epochs, ran.mixup, ran.cutmix, ran.aa) == (4, 1e-3, 0.4, 0, 0, "none")
    assert (ran.epochs, ran.blr, ran.layer_decay, ran.smoothing, ran.drop_path) == (8, 2.5e-4, 0.65, 0.1, 0.1)
    assert line.startswith("the small-set recipe (16 training images, under --small-set 1000): batch 4")
    given = dict(batch_size=6, warmup_epochs=1, mixup=0.8, aa="rand-m5")
    ran, line = for_training_set(config_for("mage_vit_base_patch16", data="d", val="v", out="o", **given), 999, 2)
    assert {k: getattr(ran, k) for k in given} == given and (ran.lr, ran.cutmix) == (1e-3, 0)
    assert "batch" not in line and "no cutmix;" in line
    ran, _ = for_training_set(config_for("mage_vit_base_patch16", data="d", val="v", out="o", blr=1e-3, mixup=0.8), 40)
    assert (ran.lr, ran.batch_size) == (None, 10)             # blr scales by the batch; mixing: an even batch
    with pytest.raises(ValueError, match="batch_size must be even"):
        for_training_set(config_for("mage_vit_base_patch16", data="d", val="v", out="o", batch_size=3, mixup=0.5), 9)
    ran, _ = for_training_set(config_for("mage_vit_base_patch16", data="d", val="v", out="o", batch_size=3), 9)
    assert (ran.batch_size, ran.mixup, ran.cutmix) == (3, 0, 0)     # odd is fine once mixing is off
    assert for_training_set(config_for("mage_vit_base_patch16", data="d", val="v", out="o"), 12)[0].batch_size == 3


def test_label_smoothed_loss_without_timm():
    cfg = FinetuneConfig("d", "v", "o", mixup=0, cutmix=0, aa="none")
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    objective = Objective(cfg, 3)
    images = torch.rand(4, 3, 8, 8)
    same_images, same_labels = objective.targets(images, labels, 0, 0)
    assert same_images is images and same_labels is labels
    logp = logits.log_softmax(-1)
    want = (0.9 * -logp[range(4), labels] + 0.1 * -logp.mean(-1)).mean()
    torch.testing.assert_close(objective.loss(logits, labels), want)


def test_missing_timm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)   # import timm raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'mage-fast\[finetune\]'.*--mixup 0 --cutmix 0 --aa none"):
        require_timm("mixup")
    with pytest.raises(ImportError, match="mixup/cutmix"):
        Objective(FinetuneConfig("d", "v", "o"), 3)


def torchvision_eval(img: Image.Image) -> torch.Tensor:
    """The official evaluation transform, as torchvision computes it: Resize(292) scales the
    shorter side to 292 and the longer to int(292 * long / short), bicubic; CenterCrop(256)
    starts at int(round((size - 256) / 2.0)); ToTensor divides by 255 (the official code
    normalises and its engine undoes it, which leaves [0, 1])."""
    w, h = img.size
    size = (292, int(292 * h / w)) if w <= h else (int(292 * w / h), 292)
    img = img.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - 256) / 2.0)), int(round((size[1] - 256) / 2.0))
    pixels = np.asarray(img, dtype=np.float32)[top:top + 256, left:left + 256] / 255.0
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def test_eval_transform_is_the_official_one():
    rng = np.random.default_rng(0)
    transform = eval_transform()
    assert isinstance(transform, EvalTransform)
    for h, w in ((300, 400), (401, 299), (64, 48), (292, 292), (500, 257)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        torch.testing.assert_close(transform(img), torchvision_eval(img), rtol=0, atol=0)


# ---------------------------------------------------------------- pretraining checkpoints
def test_pretraining_checkpoint_loads_the_official_way(tmp_path):
    torch.manual_seed(3)
    mage = mage_vit_tiny_test().state_dict()
    torch.save({"model": mage}, tmp_path / "pre.pth")
    model = MAGEClassifier(TINY_TEST, 4)
    report = load_pretrained(model, str(tmp_path / "pre.pth"), seed=5)
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"] and not report.dropped
    assert {"norm.weight", "decoder_embed.weight", "mlm_layer.bias"} <= set(report.unexpected)
    assert "pos_embed resampled from [1, 257, 128] to [1, 197, 128]" in str(report)
    state = model.state_dict()
    for k, v in mage.items():
        if k in state and k != "pos_embed":
            assert torch.equal(state[k], v), k
    # The class token's row is kept; the 16 x 16 grid resized bicubically to 14 x 14.
    grid = mage["pos_embed"][:, 1:].reshape(1, 16, 16, -1).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(14, 14), mode="bicubic", align_corners=False)
    torch.testing.assert_close(state["pos_embed"], torch.cat([mage["pos_embed"][:, :1],
                                                              want.permute(0, 2, 3, 1).reshape(1, 196, -1)], 1))
    head = state["head.weight"]
    assert 1e-5 < head.std().item() < 3e-5 and torch.equal(state["head.bias"], torch.zeros(4))
    again = MAGEClassifier(TINY_TEST, 4)
    load_pretrained(again, str(tmp_path / "pre.pth"), seed=5)
    assert torch.equal(again.head.weight, head)

    # A head of another size is removed (and named); one that fits loads, its weight drawn anew.
    torch.save({"model": {**mage, "head.weight": torch.ones(7, 128), "head.bias": torch.ones(7)}}, tmp_path / "h7.pth")
    dropped = load_pretrained(MAGEClassifier(TINY_TEST, 4), str(tmp_path / "h7.pth")).dropped
    assert dropped == ["head.weight", "head.bias"]
    torch.save({"model": {**mage, "head.weight": torch.ones(4, 128), "head.bias": torch.ones(4)}}, tmp_path / "h4.pth")
    fits = MAGEClassifier(TINY_TEST, 4, global_pool=False)
    assert load_pretrained(fits, str(tmp_path / "h4.pth")).missing == []
    assert torch.equal(fits.head.bias, torch.ones(4)) and fits.head.weight.abs().max() < 1e-3
    torch.save({"model": {k: v for k, v in mage.items() if k != "blocks.1.mlp.fc2.bias"}}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"lacks 1 tensors.*blocks\.1\.mlp\.fc2\.bias"):
        load_pretrained(MAGEClassifier(TINY_TEST, 4), str(tmp_path / "broken.pth"))


# ---------------------------------------------------------------- runs of the commands
def write_folder(root, per_class, rng):
    """Flat colours, shifted per image: a random tokenizer tells them apart (pixel noise would
    become token noise)."""
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.array(rgb) + rng.uniform(-30, 30, 3) + np.zeros((48, 64, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(1)
    train, val = write_folder(root / "train", 2, rng), write_folder(root / "val", 1, rng)
    torch.manual_seed(0)
    torch.save({"model": mage_vit_tiny_test().state_dict()}, root / "pre.pth")
    return root, train, val


# 4 images, 2 steps per epoch of 1 x 2 accumulated; drop path and the embedding dropout on.
RUN = ["--batch-size", "1", "--accum-iter", "2", "--epochs", "2", "--warmup-epochs", "0", "--lr", "1e-2",
       "--layer-decay", "0.3", *NO_TIMM]
MID = 3  # a step in the second epoch


def finetune(data, out, *extra):
    root, train, val = data
    with torch.random.fork_rng():  # the run reseeds the process RNG
        main(["finetune", "--data", str(train), "--val", str(val), "--ckpt", str(root / "pre.pth"),
              "--out", str(out), *TINY, *extra])


def load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def log_lines(out):
    with open(out / "log.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def run(data):
    """The run, checkpointed every step; a copy of its step-MID checkpoint is kept (as a run
    stopped there would leave it) for the resume test."""
    out = data[0] / "full"
    save = loop.save_checkpoint

    def save_and_keep(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if args[5] == MID:
            shutil.copyfile(path, data[0] / "mid.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "save_checkpoint", save_and_keep)
        finetune(data, out, *RUN, "--save-every", "1")
    return out


def test_fine_tuning_ends_well_above_chance(run):
    lines = log_lines(run)
    evals = [r for r in lines if "val_top1" in r]
    assert [r["epoch"] for r in evals] == [0, 1] and all(r["val_images"] == 2 for r in evals)
    assert evals[-1]["val_top1"] == 100 and evals[-1]["val_top5"] == 100      # chance: 50
    assert evals[-1]["best_top1"] == max(r["val_top1"] for r in evals)
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_the_defaults_learn_a_small_set(data, tmp_path, capsys):
    """Only the folders, the tiny model and a short schedule: the small-set recipe (which needs no
    timm) gets every validation image right, where the official batch of 32 has no step on 8."""
    rng = np.random.default_rng(2)
    train, val = write_folder(tmp_path / "train", 4, rng), write_folder(tmp_path / "val", 2, rng)
    command = ["finetune", "--data", str(train), "--val", str(val), "--ckpt", str(data[0] / "pre.pth"),
               "--out", str(tmp_path / "out"), "--model", "mage_vit_tiny_test"]
    with pytest.raises(SystemExit, match="a step takes 32 images"):
        main([*command, "--small-set", "0"])
    with torch.random.fork_rng():
        main([*command, "--epochs", "3"])
    assert "the small-set recipe (8 training images, under --small-set 1000): batch 2" in capsys.readouterr().out
    evals = [r for r in log_lines(tmp_path / "out") if "val_top1" in r]
    assert len(evals) == 3 and evals[-1]["val_top1"] >= 95 and evals[-1]["val_images"] == 4     # chance: 50
    assert evals[-1]["val_loss"] < 0.65     # off ln 2 = 0.693, where the linear scaling rule's lr leaves it


def test_checkpoints_have_the_official_format(run):
    ckpt = load(run / "checkpoint-last.pth")
    assert {"model", "optimizer", "epoch", "scaler", "args", "train_state"} <= ckpt.keys() and ckpt["epoch"] == 1
    args = ckpt["args"]
    assert isinstance(args, argparse.Namespace) and args.lr == 1e-2 and args.nb_classes == 2
    assert args.classes == sorted(COLOURS) and args.layer_decay == 0.3 and args.global_pool
    assert ckpt["train_state"]["step"] == 4 and ckpt["train_state"]["best_top1"] == 100
    best = load(run / "checkpoint-best.pth")
    assert best["train_state"]["best_top1"] == ckpt["train_state"]["best_top1"]
    fresh = MAGEClassifier(TINY_TEST, 2)
    fresh.load_state_dict(ckpt["model"], strict=True)
    assert list(ckpt["model"]) == official_finetune_keys(TINY_TEST, True)


def official_param_groups_lrd(model, weight_decay, layer_decay):
    """util/lr_decay.param_groups_lrd as the official main_finetune.py calls it (the layer rule
    written out in expected_groups), over the trainable parameters of an unfrozen model."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name in ("cls_token", "pos_embed")
        layer = 0 if name.startswith(("cls_token", "pos_embed", "patch_embed", "token_emb")) else \
            int(name.split(".")[1]) + 1 if name.startswith("blocks") else len(model.blocks) + 1
        groups.setdefault((layer, no_decay), {"lr_scale": layer_decay ** (len(model.blocks) + 1 - layer),
                                              "weight_decay": 0.0 if no_decay else weight_decay, "params": []})
        groups[(layer, no_decay)]["params"].append(p)
    return list(groups.values())


def test_checkpoint_resumes_the_official_way(run):
    """The official misc.load_model: the model strictly into the official (unfrozen) model, the
    optimizer into AdamW over its groups, each parameter's state on it; the scaler into an
    enabled GradScaler."""
    ckpt = load(run / "checkpoint-last.pth")
    official = MAGEClassifier(TINY_TEST, 2)
    official.load_state_dict(ckpt["model"])
    optimizer = torch.optim.AdamW(official_param_groups_lrd(official, 0.05, 0.3), lr=1e-3, betas=(0.9, 0.999))
    optimizer.load_state_dict(ckpt["optimizer"])
    name = {id(p): n for n, p in official.named_parameters()}
    stepped = {name[id(p)] for p in optimizer.state}
    trainable = {n for n, p in official.named_parameters() if p.requires_grad}
    assert stepped == {n for n in trainable if not n.startswith(UNUSED_BY_CLASSIFIER)}  # never had a gradient
    for p, state in optimizer.state.items():
        assert state["exp_avg"].shape == p.shape and state["step"] == 4, name[id(p)]
    assert [g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]] == [g["lr_scale"] for g in optimizer.param_groups]
    torch.amp.GradScaler("cpu").load_state_dict(ckpt["scaler"])


@pytest.mark.machine
def test_resume_continues_exactly(data, run):
    """Resumed mid-epoch (step 3 of 4) from the checkpoint the run left there: the state of the
    uninterrupted run, bit for bit, with drop path and dropout on and two micro-batches per
    step; the same losses and validation."""
    resumed_out = data[0] / "resumed"
    finetune(data, resumed_out, *RUN, "--resume", str(data[0] / "mid.pth"))
    assert load(data[0] / "mid.pth")["train_state"]["step"] == MID
    assert_same_state(load(run / "checkpoint-last.pth"), load(resumed_out / "checkpoint-last.pth"))

    def after_mid(out):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in log_lines(out) if r["step"] > MID]
    assert after_mid(resumed_out) == after_mid(run) and len(after_mid(run)) == 2   # the step and the validation


@pytest.mark.machine
def test_sigterm_saves_a_checkpoint_that_resumes_exactly(data, run, tmp_path, monkeypatch):
    """SIGTERM after step 1 (a scheduler's preemption): the run saves step 1 and raises
    KeyboardInterrupt; resumed to step MID, it is in the state the uninterrupted run had there,
    bit for bit."""
    done, step_done = [], Progress.step_done

    def step_done_then_term(self):
        step_done(self)
        done.append(1)
        if len(done) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(Progress, "step_done", step_done_then_term)
    handler = signal.getsignal(signal.SIGTERM)
    root, train, val = data
    cfg = config_for("mage_vit_tiny_test", data=train, val=val, ckpt=root / "pre.pth", out=tmp_path, batch_size=1,
                     accum_iter=2, epochs=2, warmup_epochs=0, lr=1e-2, layer_decay=0.3, mixup=0, cutmix=0, aa="none",
                     workers=0, log_every=1)
    with torch.random.fork_rng(), pytest.raises(KeyboardInterrupt, match="interrupted by SIGTERM at step 1 of 4"):
        loop.finetune(cfg, Dist())
    assert signal.getsignal(signal.SIGTERM) is handler     # the run's handler is gone
    assert load(tmp_path / "checkpoint-last.pth")["train_state"]["step"] == 1
    finetune(data, tmp_path, *RUN, "--max-steps", str(MID))
    assert_same_state(load(data[0] / "mid.pth"), load(tmp_path / "checkpoint-last.pth"))


def test_evaluate_a_fine_tuned_checkpoint_and_resume_it(data, run, tmp_path, monkeypatch):
    out = tmp_path / "eval.json"
    chunk0 = tmp_path / "eval.json.partial" / "chunk_000000.npy"
    cmd = ["evaluate", "--ckpt", str(run / "checkpoint-best.pth"), "--data", str(data[2]), "--out", str(out),
           "--device", "cpu", "--batch-size", "1", "--chunk-size", "1"]

    def crash_in_second_chunk():
        real, calls = FastMAGEClassifier.forward, []

        def forward(self, images):
            calls.append(len(images))
            if len(calls) > 1:
                raise RuntimeError("crash")
            return real(self, images)
        monkeypatch.setattr(FastMAGEClassifier, "forward", forward)
        with pytest.raises(RuntimeError, match="crash"):
            main(cmd)
        monkeypatch.undo()
        assert chunk0.exists() and not out.exists()

    crash_in_second_chunk()
    first = np.load(chunk0)     # the classes of the blue image (label 0), best first
    main(cmd)
    result = json.loads(out.read_text())
    assert result["top1"] == load(run / "checkpoint-best.pth")["train_state"]["best_top1"]
    assert result["top5"] == 100 and result["images"] == 2 and result["classes"] == 2
    assert result["model"] == "mage_vit_tiny_test" and result["global_pool"] and not chunk0.parent.exists()
    # A chunk marked wrong comes through only if the rerun takes it instead of computing it again.
    out.unlink()
    crash_in_second_chunk()
    np.save(chunk0, np.array([[1, 0]]))
    main(cmd)
    assert first[0, 0] == 0 and json.loads(out.read_text())["top1"] == result["top1"] - 50


def test_commands_refuse_bad_input(data, run, tmp_path):
    root, train, val = data
    with pytest.raises(SystemExit, match="give the pretrained MAGE checkpoint"):
        main(["finetune", "--data", str(train), "--val", str(val), "--out", str(tmp_path / "o"), *TINY, *NO_TIMM])
    with pytest.raises(SystemExit, match="batch_size must be even"):
        finetune(data, tmp_path / "o", "--batch-size", "3", "--aa", "none", "--small-set", "0")
    other = write_folder(tmp_path / "other", 1, np.random.default_rng(0))
    (other / "green").mkdir()
    Image.new("RGB", (8, 8)).save(other / "green" / "0.png")
    with pytest.raises(SystemExit, match="different class subfolders"):
        main(["finetune", "--data", str(train), "--val", str(other), "--ckpt", str(root / "pre.pth"),
              "--out", str(tmp_path / "o"), *TINY, *NO_TIMM])
    with pytest.raises(SystemExit, match="other classes than the run was fine-tuned on"):
        main(["evaluate", "--ckpt", str(run / "checkpoint-last.pth"), "--data", str(other), "--device", "cpu",
              "--out", str(tmp_path / "e.json")])
    with pytest.raises(SystemExit, match="not a fine-tuned MAGE classifier"):
        main(["evaluate", "--ckpt", str(root / "pre.pth"), "--data", str(val), "--device", "cpu",
              "--out", str(tmp_path / "e.json")])


@pytest.mark.parametrize("flag", ["--batch-size=0", "--layer-decay=1.5", "--lr=nan", "--seed=-1", "--workers=-1",
                                  "--mixup-prob=2", "--precision=fp8", "--model=mage_vit_huge"])
def test_bad_numbers_are_usage_errors_naming_the_flag(tmp_path, flag, capsys):
    with pytest.raises(SystemExit) as exit_:     # refused before the folders are read
        main(["finetune", "--data", str(tmp_path), "--val", str(tmp_path), "--out", str(tmp_path), flag])
    assert exit_.value.code == 2 and f"argument {flag.split('=')[0]}:" in capsys.readouterr().err


def test_help_of_both_commands(capsys):
    for cmd in ("finetune", "evaluate"):
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "mage-fast[finetune]" in out and "torchrun" in out and "--layer-decay" in out and "292" in out
