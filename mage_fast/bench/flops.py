"""FLOP counts of MAGE's workloads, for TFLOP/s and MFU (docs/kernels.md#model-flop-counts: ~129 GFLOP/image for
the tokenizer, ~187 for the VQGAN decoder, ~78 (MAGE-B) and ~217 (MAGE-L) per generation step)."""
from typing import Callable

import torch

from ..configs import NUM_TOKENS, SEQ_LEN, MAGEConfig, blocks_flops, flops_per_image


def conv_flops(build: Callable[[], torch.nn.Module], input_shape) -> float:
    """Multiply-add FLOPs (x2) of every Conv2d in one forward of build() on input_shape,
    counted on the meta device (shapes only, no compute)."""
    total = 0

    def count(m, _inputs, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    with torch.device("meta"):
        module = build()
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(count)
        module(torch.empty(input_shape))
    return float(total)


def tokenizer_flops(cfg: MAGEConfig) -> float:
    from ..reference.vqgan import Encoder
    return conv_flops(lambda: Encoder(cfg.vqgan), (1, 3, 256, 256))


def detokenizer_flops(cfg: MAGEConfig) -> float:
    from ..reference.vqgan import Decoder
    return conv_flops(lambda: Decoder(cfg.vqgan), (1, cfg.vqgan.z_channels, 16, 16))


def train_flops_per_image(cfg: MAGEConfig, tokenizer: bool = True) -> float:
    """fwd + bwd (3x the forward) of the transformer, the encoder on the 129 kept tokens, plus
    the frozen tokenizer's forward (tokenizer=False: training from cached ids, none)."""
    return 3 * flops_per_image(cfg, SEQ_LEN - NUM_TOKENS // 2) + (tokenizer_flops(cfg) if tokenizer else 0.0)


def sample_flops_per_image(cfg: MAGEConfig, num_iter: int, guided: bool = False) -> float:
    """num_iter forwards over all 257 tokens, then one VQGAN decode. guided: two forwards per
    step (conditional and unconditional), the decoder over 258 tokens (the label's)."""
    if guided:
        return 2 * num_iter * flops_per_image(cfg, SEQ_LEN, SEQ_LEN + 1) + detokenizer_flops(cfg)
    return num_iter * flops_per_image(cfg, SEQ_LEN) + detokenizer_flops(cfg)


def class_conditional_train_flops(cfg: MAGEConfig) -> float:
    """A class-conditional step from token ids over a frozen encoder: the encoder's forward on
    the 129 kept tokens only, fwd + bwd (3x) of the rest, the decoder over 258 tokens."""
    kept = SEQ_LEN - NUM_TOKENS // 2
    return 3 * flops_per_image(cfg, kept, SEQ_LEN + 1) - 2 * blocks_flops(cfg.depth, cfg.embed_dim, kept, cfg.mlp_ratio)


def contrastive_train_flops(cfg: MAGEConfig, layers: int, hidden: int, dim: int) -> float:
    """A MAGE-C step from token ids, per image: MAGE's step on each of its two views, plus fwd +
    bwd (3x) of the projection head on both (its matmuls; the NT-Xent over the batch is left
    out: a B x B term, small beside the model)."""
    widths = [cfg.embed_dim] + [hidden] * (layers - 1) + [dim]
    head = 2 * sum(a * b for a, b in zip(widths, widths[1:]))
    return 2 * (train_flops_per_image(cfg, tokenizer=False) + 3 * head)


def finetune_flops_per_image(cfg: MAGEConfig, num_classes: int) -> float:
    """fwd + bwd (3x the forward) of the encoder over all 257 tokens and the linear head, plus
    the frozen tokenizer's forward."""
    encoder = blocks_flops(cfg.depth, cfg.embed_dim, SEQ_LEN, cfg.mlp_ratio) + 2 * cfg.embed_dim * num_classes
    return 3 * encoder + tokenizer_flops(cfg)


def attention_work(b: int, h: int, n: int, d: int, backward: bool, block: int = 64, tail: int = 16,
                   itemsize: int = 2) -> dict:
    """What the fused attention (kernels/attention.py) executes for [B, H, N, d], forward or
    forward + backward: `flop` 4 B H N^2 d (x3.5 with the backward), the useful work;
    `executed_flop` with the head dim padded to a power of two, N to its full blocks plus TAIL
    tiles (257 -> 272) on both sides, and the backward's recomputation (2 matmuls forward, 7
    backward: dk/dv and dq each recompute q k^T and dO v^T); `exp2` over the padded scores (once
    forward, twice backward); `nbytes` the least HBM traffic (q, k, v read and o written forward;
    q, k, v, o, dO read and dq, dk, dv written backward); `philox` calls (one per query and 16
    keys in each of the three passes with dropout)."""
    n_pad = n // block * block + -(-(n % block) // tail) * tail
    d_pad = max(16, 1 << (d - 1).bit_length())
    scores, padded = b * h * n * n, b * h * n_pad * n_pad
    passes = 3 if backward else 1
    return dict(flop=4 * scores * d * (3.5 if backward else 1),
                executed_flop=2 * padded * d_pad * (9 if backward else 2), exp2=padded * passes,
                nbytes=b * h * n * d * itemsize * (12 if backward else 4), philox=passes * padded // 16)
