"""The official fine-tuning model (LTH14/mage models_vit_mage.py): a MAGE encoder with a linear
head, for image classification.

Images go through the frozen tokenizer (under no_grad), the token embedding with the class token
(id 1100) at position 0, and the encoder over all 257 tokens with drop path; then either the
mean of the 256 image tokens and `fc_norm` (global pool, the default) or the final `norm` of the
class token, and the head.

The official model subclasses timm's (0.3.2) VisionTransformer, so its state_dict, which the
official fine-tuned checkpoints hold, also carries the ViT's own class token, position table and
patch embedding, never used since MAGE embeds tokens instead of patches. This module registers
them too, in the official order (the ViT's own parameters, patch_embed, blocks, norm, head, then
fc_norm, vqgan, token_emb), so those checkpoints load strictly and the optimizer groups built
over named_parameters() come out in the official order.
"""
from typing import Optional

import torch
from torch import nn

from ..configs import SEQ_LEN, VOCAB_SIZE, MAGEConfig
from ..model import FastAttention, build_seeded, tokenize_fast
from ..reference.layers import Attention, BertEmbeddings, Block, PatchEmbed
from ..reference.model import with_class_token
from ..reference.vqgan import VQGAN
from ..validation import check_images, values_checkable

# timm's default image size: the official model keeps it, so pos_embed has 14 x 14 + 1 rows.
TIMM_IMAGE_SIZE, PATCH_SIZE = 224, 16
# Parameters the forward never reads (registered only for the official keys).
UNUSED_BY_CLASSIFIER = ("cls_token", "pos_embed", "patch_embed.")


class MAGEClassifier(nn.Module):
    """The reference classifier: materialised attention, the tokenizer's plain argmin."""
    attention = Attention

    def __init__(self, cfg: MAGEConfig, num_classes: int, global_pool: bool = True, drop_path: float = 0.1,
                 dropout: float = 0.1):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.config, self.num_classes, self.global_pool = cfg, num_classes, global_pool
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (TIMM_IMAGE_SIZE // PATCH_SIZE) ** 2 + 1, dim))
        self.patch_embed = PatchEmbed(PATCH_SIZE, 3, dim)
        # timm's stochastic-depth rule: rates rising linearly from 0 (first block) to drop_path (last).
        rates = torch.linspace(0, drop_path, cfg.depth, device="cpu").tolist()
        # No dropout inside the blocks (the official drop_rate and attn_drop_rate are 0).
        self.blocks = nn.ModuleList(Block(dim, cfg.num_heads, cfg.mlp_ratio, 0.0, self.attention, rate)
                                    for rate in rates)
        if not global_pool:
            self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        if global_pool:  # assigned after the ViT's own modules, as the official subclass does
            self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.vqgan = VQGAN(cfg.vqgan)
        self.vqgan.requires_grad_(False)
        self.token_emb = BertEmbeddings(VOCAB_SIZE, dim, SEQ_LEN, dropout)
        self._init_weights()

    def _init_weights(self):
        """timm's ViT initialisation (the token embedding initialises itself, as in MAGE)."""
        for p in (self.pos_embed, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)
        for m in [*self.blocks.modules(), self.head]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _tokenize(self, images):
        return self.vqgan.encode(images.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, 3, 256, 256] in [0, 1] -> logits [B, num_classes]."""
        return self.head(self.forward_features(images))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, 3, 256, 256] in [0, 1] -> the pooled features the head reads [B, embed_dim]."""
        check_images(images, values=values_checkable(images))
        with torch.no_grad():
            ids = self._tokenize(images)
        x = self.token_emb(with_class_token(ids))
        for block in self.blocks:
            x = block(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:].mean(dim=1))
        return self.norm(x)[:, 0]


class FastMAGEClassifier(MAGEClassifier):
    """The same model through the fast paths: the fused attention kernel and codebook search."""
    attention = FastAttention

    def _tokenize(self, images):
        return tokenize_fast(self.vqgan, images)


IMPLEMENTATIONS = {"fast": FastMAGEClassifier, "reference": MAGEClassifier}


def build_classifier(model_name: str, num_classes: int, global_pool: bool = True, drop_path: float = 0.1,
                     impl: str = "fast", init_seed: Optional[int] = 0) -> MAGEClassifier:
    """The classifier on the encoder `model_name` (a key of CONFIGS), its random initialisation
    drawn from `init_seed` (None: torch's global RNG)."""
    return build_seeded(IMPLEMENTATIONS, model_name, impl, init_seed, num_classes, global_pool, drop_path)
