"""The drop-in fast MAGE: the reference's constructor, state_dict keys and API, with the fast
paths inside.

- attention: the fused Triton kernel straight from the qkv projection
  (ops.attention.attention_qkv), in the encoder and the decoder (head dim 48 on MAGE-B);
- tokenize: the VQGAN encoder, then the fused distance + argmin kernel (ops.vq.vq_nearest);
- the training forward without a host sync: the mask ratio drawn on the device (or given), the
  drop/mask sets, the encoder input and the decoder restore as static-shape kernels
  (ops.token_drop: mask_sets, embed_and_drop, restore), and the MLM head + label-smoothed loss
  in chunks (ops.mlm_loss), on the masked rows only when their count is known on the host;
- generation: the C++/CUDA decoding step (ops.decode_step);
- class-conditional models: the label token joins the decoder's sequence (258 rows through
  the fused attention), and a frozen encoder runs under no_grad.
Where a kernel cannot run (no GPU, no Triton, no extension) each op falls back to PyTorch and
says so in mage_fast.backend_report().
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .configs import CONFIGS, NUM_TOKENS, SEQ_LEN, MAGEConfig
from .ops.attention import attention_qkv
from .ops.decode_step import decode_step
from .ops.mlm_loss import mlm_loss
from .ops.token_drop import embed_and_drop, mask_sets, restore
from .ops.vq import vq_nearest
from .reference import model as reference
from .reference.layers import Attention
from .validation import check_noise, values_checkable


class FastAttention(Attention):
    """The official attention (fp32 scores, max subtracted, dropout on the probabilities),
    computed by the fused kernel: no [B, H, N, N] scores, no permute copies."""

    def forward(self, x):
        dropout = self.attn_drop.p if self.training else 0.0
        # The dropout seed is drawn on the device: no sync, graph-safe, and reseeded by
        # torch.manual_seed like every other random draw of a training step. 63 bits, not 64:
        # inductor writes the bounds into generated code as literals, where -2**63 parses as
        # -(2**63), which overflows int64.
        seed = torch.randint(-2**62, 2**62, (1,), device=x.device) if dropout > 0 else None
        out = attention_qkv(self.qkv(x), self.num_heads, dropout_p=dropout, scale=self.scale, seed=seed)
        return self.proj_drop(self.proj(out))


def tokenize_fast(vqgan, images):
    """The VQGAN encoder, then the fused distance + argmin kernel: ids [B, 256]."""
    return vq_nearest(vqgan.encoder(images.float()), vqgan.quantize.embedding.weight)


class MAGE(reference.MAGE):
    attention = FastAttention
    decoding_step = staticmethod(decode_step)

    def _tokenize(self, images):
        return tokenize_fast(self.vqgan, images)

    def _num_masked(self, ratio: torch.Tensor, num_dropped: int) -> torch.Tensor:
        """ceil(256 * ratio) on the device, within [num_dropped, 256]."""
        return torch.ceil(NUM_TOKENS * ratio.double()).clamp(num_dropped, NUM_TOKENS).long()

    # Value checks (range, NaN) cost a host sync on a GPU: only on CPU in eager mode.
    _checks_values = staticmethod(values_checkable)

    def forward(self, images: Optional[torch.Tensor] = None, mask_ratio=None, noise=None, *,
                tokens: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Training loss on images, or on their codebook ids given as `tokens` (any integer
        dtype; no tokenizer runs), as the reference. Given mask_ratio (float) and noise ([B,
        256] in [0, 1), no ties) it equals the official forward; otherwise both are drawn on the
        device (noise ties, vanishingly rare, go to the lower position instead of a redraw). A
        mask_ratio given as a 0-d tensor stays on the device: no shape depends on its value, so
        torch.compile and CUDA graphs take every ratio without recompiling. A class-conditional
        model takes labels [B] (label dropout already applied); its frozen encoder runs under
        no_grad."""
        return self.forward_encoded(images, mask_ratio, noise, tokens=tokens, labels=labels)[0]

    def forward_encoded(self, images: Optional[torch.Tensor] = None, mask_ratio=None, noise=None, *,
                        tokens: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(loss, encoded): forward's loss and the encoder's output [B, KEPT, D], as the
        reference's forward_encoded."""
        gt = self._training_ids(images, tokens)
        batch, device = gt.shape[0], gt.device
        labels = self._check_labels(labels, batch, device)
        on_device = isinstance(mask_ratio, torch.Tensor)
        if mask_ratio is not None and (not on_device or values_checkable(mask_ratio)) \
                and not self.mask_ratio_min <= float(mask_ratio) <= 1.0:
            raise ValueError(f"mask_ratio must be in [{self.mask_ratio_min}, 1], got {float(mask_ratio)}")
        num_dropped = self.token_counts(self.mask_ratio_min)[0]
        if mask_ratio is None:
            num_masked = self._num_masked(self.draw_mask_ratio(device), num_dropped)
        elif on_device:
            num_masked = self._num_masked(mask_ratio.to(device), num_dropped)
        else:
            num_masked = self.token_counts(mask_ratio)[1]
        if noise is None:
            noise = torch.rand(batch, NUM_TOKENS, device=device)
        else:
            check_noise(noise, batch, values=values_checkable(noise))
            noise = noise.to(device)
        keep, masked = mask_sets(noise, num_dropped, num_masked)
        encoded = self._encode_kept(gt, keep, masked)
        x = self._decode_kept(encoded, keep, masked, labels)
        return self._masked_loss(x, gt, masked, num_masked), encoded

    def _encode_kept(self, gt, keep, masked):
        """The encoder over the kept slots (keep: mask_sets' [B, KEPT] slot index, masked its
        [B, 257] set) of the ids gt [B, 256] -> [B, KEPT, D], after the final norm."""
        emb = self.token_emb
        with self._encoder_grad():
            x = embed_and_drop(gt, masked, keep, emb.word_embeddings.weight, emb.position_embeddings.weight,
                               emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)
            x = emb.dropout(x)
            for block in self.blocks:
                x = block(x)
            return self.norm(x)

    def _decode_kept(self, x, keep, masked, labels=None):
        """The decoder from the encoder's kept rows x [B, KEPT, D] -> [B, 257, Dd], after its norm."""
        x = restore(self.decoder_embed(x), keep, masked, self.decoder_pos_embed_learned)
        if labels is not None:  # the label token after the 257 slots: 258 rows through the fused attention
            x = torch.cat([x, self._label_token(labels)], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_norm(x[:, :SEQ_LEN])

    def _masked_loss(self, x, gt, masked, num_masked):
        """The loss over the masked positions only (masked: mask_sets' [B, 257] set). With
        num_masked known on the host only those rows go through the head; with a device count
        all 256 do, weighted 0/1, so no shape waits for the host."""
        rows = x[:, 1:]
        if isinstance(num_masked, int):
            # Exactly num_masked per row: a stable descending sort lists them first, in position order.
            order = masked[:, 1:].byte().argsort(dim=1, descending=True, stable=True)[:, :num_masked]
            rows = rows.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            targets, row_weights = gt.gather(1, order), None
        else:
            targets, row_weights = gt, masked[:, 1:].reshape(-1).float()
        head = self.mlm_layer
        h = head.ln(F.gelu(head.fc(rows)))
        codebook = self.config.vqgan.codebook_size
        return mlm_loss(h.reshape(-1, h.shape[-1]), self.token_emb.word_embeddings.weight[:codebook],
                        head.bias[0, 0, :codebook], targets.reshape(-1), row_weights)


def mage_from_config(cfg: MAGEConfig, **kwargs) -> MAGE:
    """MAGE of a configuration, the fast module; kwargs go to the constructor."""
    return MAGE.from_config(cfg, **kwargs)


def mage_vit_base_patch16(**kwargs) -> MAGE:
    """MAGE-B as published, the fast module."""
    return MAGE.from_config(CONFIGS["mage_vit_base_patch16"], **kwargs)


def mage_vit_large_patch16(**kwargs) -> MAGE:
    """MAGE-L as published, the fast module."""
    return MAGE.from_config(CONFIGS["mage_vit_large_patch16"], **kwargs)


def mage_vit_tiny_test(**kwargs) -> MAGE:
    """The tiny configuration for CPU tests (not a published model), the fast module."""
    return MAGE.from_config(CONFIGS["mage_vit_tiny_test"], **kwargs)


IMPLEMENTATIONS = {"fast": MAGE, "reference": reference.MAGE}


def build_model(name: str, impl: str = "fast", init_seed: Optional[int] = 0, **kwargs):
    """The model `name` (a key of CONFIGS) from implementation `impl` ("fast" or "reference");
    kwargs go to its constructor. The random initialisation is drawn from `init_seed` (None:
    torch's global RNG), so every process and every resumed run starts from the same weights."""
    return build_seeded({k: cls.from_config for k, cls in IMPLEMENTATIONS.items()}, name, impl, init_seed, **kwargs)


def build_seeded(implementations: dict, name: str, impl: str, init_seed: Optional[int], *args, **kwargs):
    """implementations[impl](CONFIGS[name], *args, **kwargs), initialised from `init_seed`."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(CONFIGS))}")
    if impl not in implementations:
        raise ValueError(f"impl must be one of {sorted(implementations)}, got {impl!r}")
    with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
        if init_seed is not None:
            torch.manual_seed(init_seed)
        return implementations[impl](CONFIGS[name], *args, **kwargs)
