"""Drop-in for the official models_vit_mage.py (LTH14/mage): `from mage_fast.compat import
models_vit_mage` in main_finetune.py or main_linprobe.py, and their code runs on the fast
fine-tuning model (mage_fast.recognition.classifier.FastMAGEClassifier: the fused attention and
codebook search).

VisionTransformerMage takes the arguments the official class passes to timm's (0.3.2)
VisionTransformer, has the official state_dict keys in the official order, and what the
official scripts use: forward_features, head (replaceable, as the linear probe does),
no_weight_decay(), blocks (util/lr_decay.param_groups_lrd), patch_embed.num_patches and pos_embed
(util/pos_embed.interpolate_pos_embed), global_pool both ways. Arguments MAGE cannot honour are
refused (docs/mage.md#the-official-scripts-on-the-fast-modules).
"""
from functools import partial

from torch import nn

from ..configs import FAKE_CLASS_ID, MASK_ID, MAGEConfig, VQGANConfig
from ..recognition.classifier import PATCH_SIZE, TIMM_IMAGE_SIZE, FastMAGEClassifier
from .common import layer_norm_eps, load_tokenizer, require, set_layer_norm_eps


class VisionTransformerMage(FastMAGEClassifier):
    def __init__(self, global_pool=False, vqgan_ckpt_path='vqgan_jax.ckpt', img_size=TIMM_IMAGE_SIZE,
                 patch_size=PATCH_SIZE, in_chans=3, num_classes=1000, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4., qkv_bias=True, qk_scale=None, representation_size=None, drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0., hybrid_backbone=None, norm_layer=None):
        # What timm's ViT would build that MAGE has no place for: its patch embedding and
        # position table are registered for the keys only, and the blocks are MAGE's.
        require((img_size, patch_size, in_chans) == (TIMM_IMAGE_SIZE, PATCH_SIZE, 3),
                f"img_size, patch_size and in_chans only shape the ViT's unused patch embedding and position "
                f"table; MAGE's are ({TIMM_IMAGE_SIZE}, {PATCH_SIZE}, 3), got ({img_size}, {patch_size}, {in_chans})")
        require(num_classes >= 1, f"num_classes must be >= 1 (a head), got {num_classes}")
        require(qkv_bias and qk_scale is None, "MAGE's attention has a qkv bias and the 1/sqrt(head_dim) scale: "
                f"qkv_bias must be True and qk_scale None, got {qkv_bias} and {qk_scale}")
        require(representation_size is None and hybrid_backbone is None,
                "representation_size and hybrid_backbone are not part of MAGE: both must be None")
        require(drop_rate == 0 and attn_drop_rate == 0, "the fine-tuning blocks have no dropout (the official "
                f"drop_rate and attn_drop_rate are 0): got {drop_rate} and {attn_drop_rate}")
        eps = layer_norm_eps(norm_layer or partial(nn.LayerNorm, eps=1e-6))  # timm's default norm
        cfg = MAGEConfig(embed_dim, depth, num_heads, 1, 1, 1, mlp_ratio, VQGANConfig())  # no decoder here
        super().__init__(cfg, num_classes, global_pool, drop_path=drop_path_rate)
        set_layer_norm_eps([*self.blocks, self.fc_norm if global_pool else self.norm], eps)
        self.patch_embed.num_patches = (img_size // patch_size) ** 2
        self.fake_class_label, self.mask_token_label = FAKE_CLASS_ID, MASK_ID
        load_tokenizer(self, vqgan_ckpt_path)

    def no_weight_decay(self):
        """timm 0.3.2's: the ViT's position table and class token."""
        return {"pos_embed", "cls_token"}


def vit_base_patch16(**kwargs):
    return VisionTransformerMage(patch_size=PATCH_SIZE, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                 qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


def vit_large_patch16(**kwargs):
    return VisionTransformerMage(patch_size=PATCH_SIZE, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
                                 qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
