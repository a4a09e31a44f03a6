"""Drop-in for the official models_mage.py (LTH14/mage): `from mage_fast.compat import models_mage`
in main_pretrain.py or gen_img_uncond.py, and their code runs on the fast MAGE.

MaskedGenerativeEncoderViT takes the official constructor's arguments, has its state_dict keys
(in its order) and the attributes and methods the official scripts use: forward(imgs) -> (loss,
imgs, token_all_mask), forward_encoder, forward_decoder, forward_loss, token_emb, blocks, norm,
mask_token_label, fake_class_label, vqgan.quantize.get_codebook_entry, vqgan.decode. The mask
ratio and the noise come from the official generators in the official order (scipy's truncnorm on
numpy's global RNG, then torch.rand redrawn while it has ties), so a seeded run masks the same
tokens. Inside: the fused kernels of mage_fast.MAGE (docs/mage.md#the-official-scripts-on-the-fast-modules).
"""
from functools import partial

import torch
from torch import nn

from ..configs import FAKE_CLASS_ID, IMAGE_SIZE, MASK_ID, NUM_TOKENS, VQGANConfig
from ..model import MAGE
from ..ops.token_drop import mask_sets
from ..reference.layers import label_smoothed_nll
from ..reference.model import slot_sets
from .common import layer_norm_eps, load_tokenizer, order_submodules, require, set_layer_norm_eps
from .mask_ratio import mask_ratio_generator
from .tokenizer import VQModel

PATCH_SIZE = 16
# The official class's order of submodules (named_parameters and state_dict follow it).
OFFICIAL_ORDER = ("vqgan", "token_emb", "patch_embed", "blocks", "norm", "decoder_embed", "decoder_blocks",
                  "decoder_norm", "decoder_pred", "mlm_layer")


class MaskedGenerativeEncoderViT(MAGE):
    tokenizer = VQModel

    def __init__(self, img_size=IMAGE_SIZE, patch_size=PATCH_SIZE, in_chans=3,
                 embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4., norm_layer=nn.LayerNorm, norm_pix_loss=False,
                 mask_ratio_min=0.5, mask_ratio_max=1.0, mask_ratio_mu=0.55, mask_ratio_std=0.25,
                 vqgan_ckpt_path='vqgan_jax_strongaug.ckpt'):
        require(img_size == IMAGE_SIZE and patch_size == PATCH_SIZE,
                f"MAGE reads {IMAGE_SIZE}x{IMAGE_SIZE} images as 16x16 tokens: img_size must be {IMAGE_SIZE} and "
                f"patch_size {PATCH_SIZE}, got {img_size} and {patch_size}")
        require(mask_ratio_std > 0, f"mask_ratio_std must be > 0, got {mask_ratio_std}")
        eps = layer_norm_eps(norm_layer)
        super().__init__(embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                         mask_ratio_min, mask_ratio_max, mask_ratio_mu, mask_ratio_std, dropout=0.1,
                         vqgan=VQGANConfig(), img_size=img_size, patch_size=patch_size, in_chans=in_chans)
        set_layer_norm_eps([*self.blocks, self.norm, *self.decoder_blocks, self.decoder_norm], eps)
        order_submodules(self, OFFICIAL_ORDER)
        self.patch_embed.num_patches = NUM_TOKENS
        self.norm_pix_loss = norm_pix_loss  # stored and never read, as in the official model
        self.codebook_size = self.config.vqgan.codebook_size
        self.fake_class_label, self.mask_token_label = FAKE_CLASS_ID, MASK_ID
        self.mask_ratio_generator = mask_ratio_generator(mask_ratio_min, mask_ratio_max, mask_ratio_mu,
                                                         mask_ratio_std)
        load_tokenizer(self, vqgan_ckpt_path)

    @property
    def pad_with_cls_token(self) -> bool:
        """The official switch, always True in MAGE: masked and dropped slots start as the class token."""
        return True

    def draw_masks(self, batch: int, device):
        """(mask_ratio, noise [B, 256], dropped, masked [B, 256] bool) as forward_encoder draws them:
        mask_ratio_generator.rvs(1)[0], then torch.rand(batch, 256) again while it has ties at
        the thresholds (a host sync, which the official loop makes too)."""
        num_dropped = self.token_counts(self.mask_ratio_min)[0]
        require(num_dropped > 0, "the training forward drops ceil(256 * mask_ratio_min) tokens, which needs "
                f"mask_ratio_min > 0 (got {self.mask_ratio_min}; the official forward fails there too)")
        ratio = float(self.mask_ratio_generator.rvs(1)[0])
        noise, (dropped, masked) = self._draw_noise(batch, device, ratio)
        return ratio, noise, dropped, masked

    def forward(self, imgs: torch.Tensor):
        """(loss, imgs, token_all_mask float [B, 257]): the fused training forward (no logits
        stored) on the official draws."""
        ratio, noise, dropped, masked = self.draw_masks(imgs.shape[0], imgs.device)
        loss = super().forward(imgs, mask_ratio=ratio, noise=noise)
        return loss, imgs, slot_sets(dropped, masked)[1].float()

    def forward_encoder(self, x: torch.Tensor):
        """(latent [B, 257 - ceil(256 * mask_ratio_min), D], gt_indices int64 [B, 256],
        token_drop_mask, token_all_mask float [B, 257]), as the official."""
        gt = self._training_ids(x, None)
        ratio, noise, dropped, masked = self.draw_masks(gt.shape[0], gt.device)
        keep_index, slots_masked = mask_sets(noise, *self.token_counts(ratio))
        latent = self._encode_kept(gt, keep_index, slots_masked)
        keep, _ = slot_sets(dropped, masked)
        return latent, gt, keep.logical_not().float(), slots_masked.float()

    def forward_decoder(self, x: torch.Tensor, token_drop_mask: torch.Tensor, token_all_mask: torch.Tensor):
        """Logits [B, 257, 2025] from the kept rows x [B, KEPT, D] and the [B, 257] masks (any
        dtype, nonzero where set; token_drop_mask with 257 - KEPT per row, slot 0 kept)."""
        # The kept slots in ascending order: a stable sort puts the zeros of the drop mask first.
        keep = token_drop_mask.ne(0).byte().argsort(dim=1, stable=True)[:, :x.shape[1]]
        h = self._decode_kept(x, keep, token_all_mask.ne(0))
        return self.mlm_layer(h, self.token_emb.word_embeddings.weight.detach())

    def forward_loss(self, gt_indices: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The label-smoothed loss over the slots mask [B, 257] sets, as the official."""
        bsz, seq_len = gt_indices.shape
        loss = label_smoothed_nll(logits[:, 1:, :self.codebook_size].reshape(bsz * seq_len, -1),
                                  gt_indices.reshape(-1)).reshape(bsz, seq_len)
        return (loss * mask[:, 1:]).sum() / mask[:, 1:].sum()


def mage_vit_base_patch16(**kwargs):
    return MaskedGenerativeEncoderViT(
        patch_size=PATCH_SIZE, embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=768, decoder_depth=8,
        decoder_num_heads=16, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


def mage_vit_large_patch16(**kwargs):
    return MaskedGenerativeEncoderViT(
        patch_size=PATCH_SIZE, embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=1024, decoder_depth=8,
        decoder_num_heads=16, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
