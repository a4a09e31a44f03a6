"""Each quirk of the official code that the reference must copy (docs/mage.md#tokenizer,
docs/mage.md#transformer, docs/mage.md#training-forward)."""
import pytest
import torch
from torch import nn

from mage_fast.configs import FAKE_CLASS_ID, MASK_ID
from mage_fast.reference.vqgan import ResnetBlock, VectorQuantizer, nearest_code, swish


def test_layernorm_eps_is_1e6_except_the_mlm_head(tiny):
    eps = {name: m.eps for name, m in tiny.named_modules() if isinstance(m, nn.LayerNorm)}
    assert eps.pop("mlm_layer.ln") == 1e-5
    assert eps and set(eps.values()) == {1e-6}
    assert {m.eps for m in tiny.vqgan.modules() if isinstance(m, nn.GroupNorm)} == {1e-6}


def test_resnet_shortcut_is_applied_to_the_block_output():
    torch.manual_seed(0)
    block = ResnetBlock(32, 64)
    x = torch.randn(2, 32, 8, 8)
    h = block.conv2(swish(block.norm2(block.conv1(swish(block.norm1(x))))))
    torch.testing.assert_close(block(x), block.nin_shortcut(h) + h, rtol=0, atol=0)
    assert block.nin_shortcut.weight.shape == (64, 64, 1, 1)


@pytest.mark.machine
def test_quantizer_raster_order_and_first_index_on_ties():
    """Small integers: every distance is exact in fp32 whatever the summation order, so the tie
    is a tie on any CPU's BLAS."""
    torch.manual_seed(0)
    vq = VectorQuantizer(1024, 8)
    vq.embedding.weight.data = torch.randint(-4, 5, (1024, 8)).float()
    vq.embedding.weight.data[700] = vq.embedding.weight.data[5]   # a tie: 5 must win
    first = {tuple(row): i for i, row in reversed(list(enumerate(vq.embedding.weight.tolist())))}
    assert all(first[tuple(row)] == i for i, row in enumerate(vq.embedding.weight[:256].tolist()))
    z = vq.embedding.weight.data[:256].t().reshape(1, 8, 16, 16)  # z[:, :, h, w] = code h*16+w
    ids = vq(z)
    assert torch.equal(ids[0], torch.arange(256))
    assert nearest_code(vq.embedding.weight.data[700:701], vq.embedding.weight.data).item() == 5


def test_quantizer_distance_stays_fp32_under_autocast():
    torch.manual_seed(0)
    codes = torch.randn(1024, 32)
    z = codes[torch.randint(0, 1024, (64,))] + 1e-3 * torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = nearest_code(z, codes)
    assert torch.equal(ids, torch.cdist(z.double(), codes.double()).argmin(1))


def test_detokenize_is_clipped(tiny):
    ids = torch.randint(0, 1024, (1, 256))
    with torch.no_grad():
        raw = tiny.vqgan.decoder(tiny.vqgan.quantize.lookup(ids))
        tiny.vqgan.decoder.conv_out.bias += 5.0
        try:
            img = tiny.detokenize(ids)
        finally:
            tiny.vqgan.decoder.conv_out.bias -= 5.0
    assert img.min() >= 0 and img.max() <= 1 and (img == 1).any()
    assert raw.shape == img.shape == (1, 3, 256, 256)


def _capture(module, store, key, pre=False):
    if pre:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0].detach().clone()))
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out.detach().clone()))


def test_training_forward_tokens_drop_and_class_token_padding(tiny, images):
    torch.manual_seed(3)
    noise = torch.rand(2, 256)
    ratio = 0.7
    seen = {}
    hooks = [_capture(tiny.token_emb, seen, "tokens", pre=True),
             _capture(tiny.blocks[0], seen, "encoder_in", pre=True),
             _capture(tiny.decoder_embed, seen, "decoder_embed"),
             _capture(tiny.decoder_blocks[0], seen, "decoder_in", pre=True)]
    try:
        tiny(images, mask_ratio=ratio, noise=noise)
    finally:
        for h in hooks:
            h.remove()
    dropped, masked = tiny.masks_from_noise(noise, ratio)
    gt = tiny.tokenize(images)
    tokens = seen["tokens"]
    assert (tokens[:, 0] == FAKE_CLASS_ID).all()
    assert torch.equal(tokens[:, 1:], torch.where(masked, MASK_ID, gt))
    assert seen["encoder_in"].shape == (2, 129, 128)
    # every masked slot (dropped or not) holds the class token's decoder embedding + its position
    cls = seen["decoder_embed"][:, 0]
    dec_in = seen["decoder_in"] - tiny.decoder_pos_embed_learned.detach()
    full_masked = torch.cat([torch.zeros(2, 1, dtype=torch.bool), masked], 1)
    torch.testing.assert_close(dec_in[full_masked], cls.unsqueeze(1).expand(-1, 257, -1)[full_masked])
    # kept and unmasked slots hold their own encoder outputs, in position order
    keep = torch.cat([torch.ones(2, 1, dtype=torch.bool), ~dropped], 1)
    own = keep & ~full_masked
    kept_rows = seen["decoder_embed"]
    scattered = torch.zeros_like(dec_in)
    scattered[keep] = kept_rows.reshape(-1, kept_rows.shape[-1])
    torch.testing.assert_close(dec_in[own], scattered[own])


def test_loss_is_label_smoothed_ce_over_masked_codebook_columns(tiny, images):
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(4))
    seen = {}
    hook = _capture(tiny.mlm_layer, seen, "logits")
    try:
        loss = tiny(images, mask_ratio=0.6, noise=noise)
    finally:
        hook.remove()
    _, masked = tiny.masks_from_noise(noise, 0.6)
    logits = seen["logits"][:, 1:].double()
    assert logits.shape == (2, 256, 2025)
    logp = torch.log_softmax(logits[..., :1024], -1)
    gt = tiny.tokenize(images)
    per_token = 0.9 * -logp.gather(-1, gt.unsqueeze(-1)).squeeze(-1) + 0.1 * -logp.mean(-1)
    torch.testing.assert_close(loss.double(), per_token[masked].mean(), rtol=1e-5, atol=0)


def test_mlm_head_tie_is_detached(tiny, images):
    """The head reads all 2025 embedding rows but must give them no gradient: only rows used
    as input tokens may receive one."""
    tiny.zero_grad(set_to_none=True)
    noise = torch.rand(2, 256, generator=torch.Generator().manual_seed(5))
    tiny(images, mask_ratio=0.8, noise=noise).backward()
    grad = tiny.token_emb.word_embeddings.weight.grad
    _, masked = tiny.masks_from_noise(noise, 0.8)
    used = set(tiny.tokenize(images)[~masked].tolist()) | {FAKE_CLASS_ID, MASK_ID}
    unused = torch.ones(2025, dtype=torch.bool)
    unused[list(used)] = False
    assert grad[unused].abs().max() == 0
    assert grad[MASK_ID].abs().max() > 0
    assert tiny.mlm_layer.bias.grad.abs().max() > 0
    assert all(p.grad is None for p in tiny.vqgan.parameters())
    tiny.zero_grad(set_to_none=True)
