"""state_dict keys are the official model's, and checkpoints load strictly (docs/mage.md#tokenizer,
docs/mage.md#checkpoints)."""
import argparse

import pytest
import torch

from mage_fast import load_checkpoint
from mage_fast.reference import mage_vit_base_patch16, mage_vit_tiny_test


def resnet_keys(prefix, shortcut=False):
    keys = [f"{prefix}.{n}" for n in ("norm1.weight", "norm1.bias", "conv1.weight",
                                      "norm2.weight", "norm2.bias", "conv2.weight")]
    return keys + ([f"{prefix}.nin_shortcut.weight"] if shortcut else [])


def official_vqgan_keys():
    """MaskGIT's VQGAN (ch 128, ch_mult 1,1,2,2,4, 2 blocks per level), as docs/mage.md#tokenizer describes it."""
    keys = ["encoder.conv_in.weight", "encoder.norm_out.weight", "encoder.norm_out.bias",
            "encoder.conv_out.weight", "encoder.conv_out.bias",
            "decoder.conv_in.weight", "decoder.conv_in.bias", "decoder.norm_out.weight",
            "decoder.norm_out.bias", "decoder.conv_out.weight", "decoder.conv_out.bias",
            "quantize.embedding.weight"]
    widths = [128, 128, 256, 256, 512]
    for i in range(5):  # encoder level i: widths[i-1] -> widths[i]
        c_in = 128 if i == 0 else widths[i - 1]
        keys += resnet_keys(f"encoder.down.{i}.block.0", shortcut=c_in != widths[i])
        keys += resnet_keys(f"encoder.down.{i}.block.1")
    for i in range(5):  # decoder up[i] runs 4..0 and outputs widths[i]
        c_in = 512 if i == 4 else widths[i + 1]
        keys += resnet_keys(f"decoder.up.{i}.block.0", shortcut=c_in != widths[i])
        keys += resnet_keys(f"decoder.up.{i}.block.1")
        if i != 0:
            keys += [f"decoder.up.{i}.upsample.conv.weight", f"decoder.up.{i}.upsample.conv.bias"]
    for part in ("encoder", "decoder"):
        for b in ("block_1", "block_2"):
            keys += resnet_keys(f"{part}.mid.{b}")
    return keys


def official_mage_keys(depth, decoder_depth):
    keys = ["cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "decoder_pos_embed_learned",
            "token_emb.position_ids", "token_emb.word_embeddings.weight",
            "token_emb.position_embeddings.weight", "token_emb.LayerNorm.weight", "token_emb.LayerNorm.bias",
            "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight", "decoder_norm.bias",
            "decoder_pred.weight", "decoder_pred.bias", "mlm_layer.fc.weight", "mlm_layer.fc.bias",
            "mlm_layer.ln.weight", "mlm_layer.ln.bias", "mlm_layer.bias"]
    for stack, n in (("blocks", depth), ("decoder_blocks", decoder_depth)):
        for i in range(n):
            for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                keys += [f"{stack}.{i}.{layer}.weight", f"{stack}.{i}.{layer}.bias"]
    return keys + ["vqgan." + k for k in official_vqgan_keys()]


def test_base_state_dict_has_exactly_the_official_keys_and_shapes():
    with torch.device("meta"):
        sd = mage_vit_base_patch16().state_dict()
    assert sorted(sd) == sorted(official_mage_keys(12, 8))
    shapes = {"blocks.0.attn.qkv.weight": [2304, 768], "decoder_blocks.7.attn.qkv.weight": [2304, 768],
              "token_emb.word_embeddings.weight": [2025, 768], "token_emb.position_embeddings.weight": [257, 768],
              "token_emb.position_ids": [1, 257], "mlm_layer.bias": [1, 1, 2025], "mlm_layer.fc.weight": [768, 768],
              "patch_embed.proj.weight": [768, 3, 16, 16], "decoder_pred.weight": [768, 768],
              "decoder_pos_embed_learned": [1, 257, 768], "vqgan.quantize.embedding.weight": [1024, 256],
              "vqgan.encoder.conv_in.weight": [128, 3, 3, 3], "vqgan.encoder.conv_out.weight": [256, 512, 1, 1],
              "vqgan.encoder.down.2.block.0.nin_shortcut.weight": [256, 256, 1, 1],
              "vqgan.decoder.conv_in.weight": [512, 256, 3, 3], "vqgan.decoder.conv_out.weight": [3, 128, 3, 3]}
    for key, shape in shapes.items():
        assert list(sd[key].shape) == shape, key
    assert sd["token_emb.position_ids"].dtype == torch.int64


def official_style_checkpoint(model):
    return {"model": model.state_dict(), "optimizer": {}, "epoch": 1599, "scaler": {},
            "args": argparse.Namespace(model="mage_vit_tiny_test", batch_size=64)}


def test_strict_round_trip(tmp_path):
    torch.manual_seed(0)
    src = mage_vit_tiny_test()
    path = tmp_path / "mage.pth"
    torch.save(official_style_checkpoint(src), path)
    torch.manual_seed(1)
    dst = mage_vit_tiny_test()
    report = load_checkpoint(dst, str(path))
    assert report.loaded == len(src.state_dict()) and not report.missing and not report.unexpected
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    # the plain torch path that official scripts use works too
    dst.load_state_dict(torch.load(path, weights_only=False)["model"], strict=True)


def test_tokenizer_checkpoint_loads_under_vqgan_prefix(tmp_path):
    torch.manual_seed(0)
    src = mage_vit_tiny_test()
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": src.vqgan.state_dict()}, path)
    dst = mage_vit_tiny_test()
    report = load_checkpoint(dst, vqgan_ckpt=str(path))
    assert report.loaded == len(src.vqgan.state_dict()) and not report.missing
    assert torch.equal(dst.vqgan.quantize.embedding.weight, src.vqgan.quantize.embedding.weight)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = mage_vit_tiny_test().state_dict()
    del sd["mlm_layer.bias"]
    sd["head.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    model = mage_vit_tiny_test()
    with pytest.raises(ValueError, match="mlm_layer.bias") as err:
        load_checkpoint(model, str(path))
    assert "head.weight" in str(err.value)
    report = load_checkpoint(model, str(path), strict=False)
    assert report.missing == ["mlm_layer.bias"] and report.unexpected == ["head.weight"]


def test_wrong_config_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"model": mage_vit_tiny_test().state_dict()}, path)
    model = mage_vit_tiny_test(embed_dim=64, num_heads=1)
    with pytest.raises(ValueError, match=r"does not fit this model \(39 tensors of another shape, e.g. cls_token: "
                       r"checkpoint \[1, 1, 128\] vs model \[1, 1, 64\]\)"):
        load_checkpoint(model, str(path))


def test_missing_file_and_nothing_to_load(tmp_path):
    model = mage_vit_tiny_test()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError):
        load_checkpoint(model)
