"""The reference MAGE: pure PyTorch, computed as the official code (LTH14/mage) computes it.

It is the oracle every fast path is tested against, so it favours clarity over speed. Its
state_dict has exactly the official keys (the tokenizer under `vqgan.*`, the unused
parameters included), so official checkpoints load with strict=True. A class-conditional model
(class_conditional=True) adds two keys, CLASS_KEYS, for the label token of its decoder
(docs/mage.md#class-conditional-generation).
"""
import contextlib
import dataclasses
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import (
    CONFIGS,
    FAKE_CLASS_ID,
    MASK_ID,
    NUM_TOKENS,
    SEQ_LEN,
    TOKEN_GRID,
    VOCAB_SIZE,
    MAGEConfig,
    VQGANConfig,
)
from ..validation import check_decoding, check_guidance, check_ids, check_images, check_labels, check_noise, check_seeds
from .decoding import decoding_step
from .layers import Attention, BertEmbeddings, Block, MlmLayer, PatchEmbed, label_smoothed_nll, sincos_pos_embed
from .vqgan import VQGAN

# The parameters a class-conditional model adds: the label embedding (num_classes + 1 rows, the
# last "no class") and the label token's position vector; the token sits after the 257 slots.
CLASS_KEYS = ("class_emb.weight", "class_pos_embed")
# The parameters of the encoder, which class-conditional training keeps frozen by default.
ENCODER = ("token_emb.", "blocks.", "norm.")
# The seed of the class parameters' initial values: the same whatever the global RNG.
CLASS_INIT_SEED = 0


def guidance_at(scale: float, schedule: str, step: int, num_iter: int) -> float:
    """The guidance scale of decoding step `step` (0 .. num_iter - 1): `scale` at every step
    ("constant"), or rising linearly to it, scale * (step + 1) / num_iter ("linear")."""
    check_guidance(scale, schedule)
    return scale if schedule == "constant" else scale * (step + 1) / num_iter


def drop_labels(labels: torch.Tensor, uniforms: torch.Tensor, label_drop: float, num_classes: int) -> torch.Tensor:
    """Label dropout: each label becomes num_classes ("no class") where its uniform in [0, 1) is
    below label_drop. The caller draws the uniforms (training: from the run's seed and counters)."""
    return torch.where(uniforms < label_drop, num_classes, labels)


# ---------------------------------------------------------------- the official drop/mask steps
def threshold_sets(noise, num_dropped: int, num_masked: int):
    """(dropped, masked) [B, 256]: noise <= its num_dropped-th (num_masked-th) smallest value,
    the official thresholds (sets of the right size only for noise without ties there)."""
    sorted_noise = noise.sort(dim=1).values
    return (noise <= sorted_noise[:, num_dropped - 1: num_dropped],
            noise <= sorted_noise[:, num_masked - 1: num_masked])


def with_class_token(ids):
    """[B, 256] ids -> [B, 257] int64 token ids, the class token first."""
    cls = torch.full((ids.shape[0], 1), FAKE_CLASS_ID, dtype=torch.long, device=ids.device)
    return torch.cat([cls, ids.long()], dim=1)


def slot_sets(dropped, masked):
    """(keep, masked) [B, 257] over the slots from the official (dropped, masked) [B, 256] over
    the tokens: slot 0, the class token, is kept and never masked."""
    no = torch.zeros_like(masked[:, :1])
    return torch.cat([no, dropped], dim=1).logical_not(), torch.cat([no, masked], dim=1)


def masked_tokens(ids, masked):
    """The 257 token ids the encoder embeds: the class token, then ids [B, 256], MASK_ID in the
    slots masked [B, 257] sets."""
    return torch.where(masked, MASK_ID, with_class_token(ids))


def keep_rows(x, keep):
    """The rows of x [B, 257, D] where keep [B, 257] is set, in position order (the same count
    in every row), by boolean nonzero indexing as the official encoder input."""
    return x[keep.nonzero(as_tuple=True)].reshape(x.shape[0], -1, x.shape[-1])


def restore_slots(x, keep, masked):
    """The official decoder input before its position embedding: every slot starts as the class
    token's row, the kept rows go back to their positions (keep=None: nothing was dropped), and
    every masked slot (dropped or not) gets the class token again."""
    cls_fill = x[:, 0:1].repeat(1, SEQ_LEN, 1)
    padded = x
    if keep is not None:
        padded = cls_fill.clone()
        padded[keep.nonzero(as_tuple=True)] = x.reshape(-1, x.shape[-1])
    return torch.where(masked.unsqueeze(-1), cls_fill, padded)


class MAGE(nn.Module):
    # What a subclass swaps in: the attention module, the decoding step, the tokenizer's class.
    attention = Attention
    decoding_step = staticmethod(decoding_step)
    tokenizer = VQGAN

    def __init__(self, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 mask_ratio_min=0.5, mask_ratio_max=1.0, mask_ratio_mu=0.55, mask_ratio_std=0.25,
                 dropout=0.1, vqgan: VQGANConfig = VQGANConfig(), img_size=256, patch_size=16, in_chans=3,
                 class_conditional: bool = False, num_classes: int = 1000):
        super().__init__()
        if not 0.0 <= mask_ratio_min <= mask_ratio_max <= 1.0:
            raise ValueError(f"need 0 <= mask_ratio_min <= mask_ratio_max <= 1, got {mask_ratio_min}, {mask_ratio_max}")
        self.config = MAGEConfig(embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth,
                                 decoder_num_heads, mlp_ratio, vqgan)
        self.mask_ratio_min, self.mask_ratio_max = mask_ratio_min, mask_ratio_max
        self.mask_ratio_mu, self.mask_ratio_std = mask_ratio_mu, mask_ratio_std

        self.vqgan = self.tokenizer(vqgan)
        self.vqgan.requires_grad_(False)
        self.token_emb = BertEmbeddings(VOCAB_SIZE, embed_dim, SEQ_LEN, dropout)

        # Registered but unused by MAGE: present so official checkpoints load strictly.
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, SEQ_LEN, embed_dim), requires_grad=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, SEQ_LEN, decoder_embed_dim), requires_grad=False)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)

        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, dropout, self.attention)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, SEQ_LEN, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, dropout, self.attention)
            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.mlm_layer = MlmLayer(decoder_embed_dim, embed_dim, VOCAB_SIZE)

        self.class_conditional, self.num_classes = class_conditional, num_classes if class_conditional else 0
        self.encoder_frozen = False
        if class_conditional:
            if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
                raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
            # _weight: no draw from the global RNG here, so the other weights do not depend on
            # whether the model is class-conditional; init_class_parameters sets them.
            self.class_emb = nn.Embedding(num_classes + 1, decoder_embed_dim,
                                          _weight=torch.empty(num_classes + 1, decoder_embed_dim))
            self.class_pos_embed = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self._init_weights()

    @classmethod
    def from_config(cls, cfg: MAGEConfig, **kwargs):
        """This implementation at configuration `cfg` (e.g. configs.MAGE_B); kwargs override
        constructor arguments (dropout, the mask-ratio distribution)."""
        return cls(**{**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, **kwargs})

    def _init_weights(self):
        self.pos_embed.data.copy_(sincos_pos_embed(self.pos_embed.shape[-1], TOKEN_GRID))
        self.decoder_pos_embed.data.copy_(sincos_pos_embed(self.decoder_pos_embed.shape[-1], TOKEN_GRID))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for p in (self.cls_token, self.mask_token, self.decoder_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.class_conditional:
            self.init_class_parameters()

    @torch.no_grad()
    def init_class_parameters(self):
        """The label embedding and its position vector: trunc-normal(0.02) from CLASS_INIT_SEED,
        as a checkpoint without them (an unconditional one) leaves them."""
        g = torch.Generator().manual_seed(CLASS_INIT_SEED)
        for p in (self.class_emb.weight, self.class_pos_embed):
            p.copy_(nn.init.trunc_normal_(torch.empty(p.shape), std=0.02, generator=g))

    @property
    def class_keys(self):
        """The state_dict keys a checkpoint may lack, being initialised here: CLASS_KEYS on a
        class-conditional model (an unconditional checkpoint is its start), none otherwise."""
        return CLASS_KEYS if self.class_conditional else ()

    def freeze_encoder(self):
        """Class-conditional training over a pretrained encoder: the encoder's parameters (the
        token embedding, blocks and final norm) get no gradient, and the training forward runs
        them under no_grad."""
        for name, p in self.named_parameters():
            if name.startswith(ENCODER):
                p.requires_grad_(False)
        self.encoder_frozen = True

    def _encoder_grad(self):
        """The context of the encoder's part of a training forward: no_grad when it is frozen."""
        return torch.no_grad() if self.encoder_frozen else contextlib.nullcontext()

    def _check_labels(self, labels, batch: int, device=None):
        """labels [batch] int64 in [0, num_classes] (num_classes: no class) on a class-conditional
        model, which needs them, moved to `device`; none on an unconditional one. Their values
        are checked where that is free (_checks_values)."""
        if not self.class_conditional:
            if labels is not None:
                raise ValueError("labels were given to a model that is not class-conditional "
                                 "(build it with class_conditional=True)")
            return None
        if labels is None:
            raise ValueError(f"a class-conditional model needs labels: int64 [B] in [0, {self.num_classes}] "
                             f"({self.num_classes}: no class)")
        check_labels(labels, batch, self.num_classes, values=self._checks_values(labels))
        return labels.to(device) if device is not None else labels

    def _label_token(self, labels):
        """The decoder's label token [B, 1, Dd]: the label's embedding plus its own position."""
        return self.class_emb(labels).unsqueeze(1) + self.class_pos_embed

    # ---------------------------------------------------------------- tokenizer
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, 3, 256, 256] in [0, 1] -> int64 token ids [B, 256]."""
        check_images(images)
        return self._tokenize(images)

    def _tokenize(self, images):
        return self.vqgan.encode(images.float())

    @torch.no_grad()
    def detokenize(self, ids: torch.Tensor) -> torch.Tensor:
        """int [B, 256] codebook ids -> float [B, 3, 256, 256] in [0, 1]."""
        check_ids(ids, allow_mask=False)
        return self.vqgan.decode(ids.long())

    # ---------------------------------------------------------------- transformer
    def _encode(self, tokens, keep=None, final_norm=True):
        """Embed all 257 tokens, keep the rows where `keep` is set (ascending position order,
        the same count in every row), run the encoder (and its final LayerNorm)."""
        x = self.token_emb(tokens)
        if keep is not None:
            x = keep_rows(x, keep)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) if final_norm else x

    def _decode(self, x, keep, masked, labels=None):
        """Decoder over all 257 slots -> logits [B, 257, 2025]. Every slot starts as the class
        token's decoder embedding, the kept encoder outputs go back to their positions (keep=None:
        nothing was dropped), and every masked position (dropped or not) is overwritten with the
        class token again. A class-conditional model appends its label token (slot 257), which
        the decoder attends to and the head never reads."""
        x = restore_slots(self.decoder_embed(x), keep, masked) + self.decoder_pos_embed_learned
        if labels is not None:
            x = torch.cat([x, self._label_token(labels)], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x[:, :SEQ_LEN])
        # The head is tied to the word embeddings but detached: no gradient through this use.
        return self.mlm_layer(x, self.token_emb.word_embeddings.weight.detach())

    def logits(self, ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One generation step's forward: ids [B, 256] (MASK_ID where unknown) -> logits over
        the codebook [B, 256, 1024]. Nothing is dropped; masked positions are those == MASK_ID.
        A class-conditional model takes labels [B] (num_classes: no class)."""
        check_ids(ids, allow_mask=True)
        return self.logits_unchecked(ids, self._check_labels(labels, ids.shape[0], ids.device))

    def logits_unchecked(self, ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """logits() without the input checks, whose host sync would break CUDA-graph capture."""
        tokens = with_class_token(ids)
        x = self._encode(tokens)
        return self._decode(x, None, tokens == MASK_ID, labels)[:, 1:, : self.config.vqgan.codebook_size]

    def guided_logits(self, ids: torch.Tensor, labels: Optional[torch.Tensor], scale: float) -> torch.Tensor:
        """Classifier-free guidance as MUSE forms it: (1 + scale) x the logits given `labels` -
        scale x those given no class, both passes in one batch of 2B (fp32). scale 0: the
        conditional logits alone (no second pass); an unconditional model: its logits."""
        if scale == 0:  # an unconditional model's call is logits_unchecked(ids), as before labels existed
            return self.logits_unchecked(ids) if labels is None else self.logits_unchecked(ids, labels)
        none = torch.full_like(labels, self.num_classes)
        cond, uncond = self.logits_unchecked(ids.repeat(2, 1), torch.cat([labels, none])).float().chunk(2)
        return (1 + scale) * cond - scale * uncond

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "avg") -> torch.Tensor:
        """Recognition features [B, embed_dim]: all 257 tokens through the encoder (nothing masked
        or dropped). pool="avg": tokens 1..256 averaged, then a LayerNorm without affine (the
        official linear probe's fc_norm: a fresh LayerNorm, frozen); pool="cls": the final
        `norm` of the class token."""
        if pool not in ("avg", "cls"):
            raise ValueError(f"pool must be 'avg' or 'cls', got {pool!r}")
        check_images(images)
        x = self._encode(with_class_token(self._tokenize(images)), final_norm=False)
        if pool == "cls":
            return self.norm(x)[:, 0]
        return F.layer_norm(x[:, 1:].mean(dim=1), x.shape[-1:], eps=1e-6)

    # ---------------------------------------------------------------- training
    def draw_mask_ratio(self, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One draw from normal(mu, std) truncated to [mask_ratio_min, mask_ratio_max], a 0-d
        float64 tensor on `device`: u uniform between the normal CDF at the two bounds, then
        the inverse CDF."""
        return self.mask_ratio_at(torch.rand((), dtype=torch.float64, device=device, generator=generator))

    def mask_ratio_at(self, q: torch.Tensor) -> torch.Tensor:
        """The truncated normal's inverse CDF at q in [0, 1) (float64)."""
        def cdf(x):
            return 0.5 * math.erfc(-(x - self.mask_ratio_mu) / (self.mask_ratio_std * math.sqrt(2.0)))
        lo, hi = cdf(self.mask_ratio_min), cdf(self.mask_ratio_max)
        return self.mask_ratio_mu + self.mask_ratio_std * torch.special.ndtri(lo + (hi - lo) * q)

    def sample_mask_ratio(self, generator: Optional[torch.Generator] = None) -> float:
        """draw_mask_ratio on the host, as a float."""
        return float(self.draw_mask_ratio(generator=generator))

    def token_counts(self, mask_ratio: float):
        """(num_dropped, num_masked) for a step: ceil(256 * mask_ratio_min), ceil(256 * ratio)."""
        return math.ceil(NUM_TOKENS * self.mask_ratio_min), math.ceil(NUM_TOKENS * mask_ratio)

    def masks_from_noise(self, noise, mask_ratio):
        """(dropped, masked) boolean [B, 256] as the official thresholds define them: the
        num_dropped (num_masked) smallest noise values. Ties would make the sets too large:
        the official code redraws the noise then, so given noise with ties is an error."""
        num_dropped, num_masked = self.token_counts(mask_ratio)
        dropped, masked = threshold_sets(noise, num_dropped, num_masked)
        if dropped.sum() != dropped.shape[0] * num_dropped or masked.sum() != masked.shape[0] * num_masked:
            raise ValueError("noise has ties at the drop/mask thresholds; draw it again")
        return dropped, masked

    def _draw_noise(self, batch, device, mask_ratio):
        while True:  # the official redraw loop: ties in torch.rand are rare but possible
            noise = torch.rand(batch, NUM_TOKENS, device=device)
            try:
                return noise, self.masks_from_noise(noise, mask_ratio)
            except ValueError:
                continue

    @staticmethod
    def _checks_values(t: torch.Tensor) -> bool:
        """Whether the training forward checks the values of an input (range, NaN): always here."""
        return True

    def _training_ids(self, images: Optional[torch.Tensor], tokens: Optional[torch.Tensor]) -> torch.Tensor:
        """The int64 ids [B, 256] a training forward learns from: `images` tokenized, or
        `tokens`, codebook ids computed beforehand (a token cache), as given. Exactly one."""
        if (images is None) == (tokens is None):
            raise ValueError("the training forward takes images or tokens (codebook ids [B, 256]): exactly one of them")
        if tokens is not None:
            check_ids(tokens, allow_mask=False, values=self._checks_values(tokens))
            return tokens.long()
        check_images(images, values=self._checks_values(images))
        with torch.no_grad():  # the tokenizer is frozen and its ids have no gradient
            return self._tokenize(images)

    def forward(self, images: Optional[torch.Tensor] = None, mask_ratio: Optional[float] = None,
                noise: Optional[torch.Tensor] = None, *, tokens: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Training loss on images, or on their codebook ids given as `tokens` (then no
        tokenizer runs; tokens=model.tokenize(images) gives the loss of images). Given
        mask_ratio and noise ([B, 256] in [0, 1)) this is the official forward exactly;
        otherwise both are drawn as the official code draws them. A class-conditional model
        takes labels [B] in [0, num_classes], label dropout already applied (drop_labels)."""
        return self.forward_encoded(images, mask_ratio, noise, tokens=tokens, labels=labels)[0]

    def forward_encoded(self, images: Optional[torch.Tensor] = None, mask_ratio: Optional[float] = None,
                        noise: Optional[torch.Tensor] = None, *, tokens: Optional[torch.Tensor] = None,
                        labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(loss, encoded): forward's loss, and the encoder's output it decodes, [B, KEPT, D]
        after the final norm (row 0 the class token, then the kept tokens in position order),
        which MAGE-C pools (contrastive.pool)."""
        gt = self._training_ids(images, tokens)
        labels = self._check_labels(labels, gt.shape[0], gt.device)
        if mask_ratio is None:
            mask_ratio = self.sample_mask_ratio()
        if not self.mask_ratio_min <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [{self.mask_ratio_min}, 1], got {mask_ratio}")
        if noise is None:
            noise, (dropped, masked) = self._draw_noise(gt.shape[0], gt.device, mask_ratio)
        else:
            check_noise(noise, gt.shape[0])
            dropped, masked = self.masks_from_noise(noise.to(gt.device), mask_ratio)

        keep, masked = slot_sets(dropped, masked)
        with self._encoder_grad():
            x = self._encode(masked_tokens(gt, masked), keep)
        logits = self._decode(x, keep, masked, labels)

        codebook = self.config.vqgan.codebook_size
        loss = label_smoothed_nll(logits[:, 1:, :codebook].reshape(-1, codebook), gt.reshape(-1))
        weight = masked[:, 1:].reshape(-1).float()
        return (loss * weight).sum() / weight.sum(), x

    # ---------------------------------------------------------------- generation
    def check_generation(self, seeds, labels, guidance_scale: float, guidance_schedule: str):
        """(seeds, labels) of a generation as int64 tensors, checked: labels (one per seed) on
        a class-conditional model only, guidance only with labels."""
        seeds = check_seeds(seeds)
        check_guidance(guidance_scale, guidance_schedule)
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        if guidance_scale and not self.class_conditional:
            raise ValueError("guidance_scale needs a class-conditional model")
        return seeds, self._check_labels(labels, seeds.shape[0])

    @torch.no_grad()
    def generate(self, seeds: Union[Sequence[int], torch.Tensor], num_iter: int = 12,
                 choice_temperature: float = 4.5, labels: Optional[Union[Sequence[int], torch.Tensor]] = None,
                 guidance_scale: float = 0.0, guidance_schedule: str = "constant") -> torch.Tensor:
        """Iterative decoding from all-masked tokens: one seed per image -> ids [B, 256].
        A class-conditional model takes one label per seed (num_classes: no class) and, with
        guidance_scale s > 0, guides each step's logits: (1 + s_t) x conditional - s_t x
        unconditional, s_t from guidance_at. Runs in eval mode (no dropout) and restores the
        module's mode afterwards."""
        seeds, labels = self.check_generation(seeds, labels, guidance_scale, guidance_schedule)
        check_decoding(num_iter, choice_temperature)
        device = self.token_emb.word_embeddings.weight.device
        seeds = seeds.to(device)
        labels = labels.to(device) if labels is not None else None
        ids = torch.full((seeds.shape[0], NUM_TOKENS), MASK_ID, dtype=torch.long, device=device)
        was_training = self.training
        self.eval()
        try:
            for step in range(num_iter):
                scale = guidance_at(guidance_scale, guidance_schedule, step, num_iter)
                ids, filled = self.decoding_step(self.guided_logits(ids, labels, scale), ids, seeds, step, num_iter,
                                                 choice_temperature)
        finally:
            self.train(was_training)
        return filled


def mage_from_config(cfg: MAGEConfig, **kwargs) -> MAGE:
    """MAGE of a configuration, the reference; kwargs go to the constructor."""
    return MAGE.from_config(cfg, **kwargs)


def mage_vit_base_patch16(**kwargs) -> MAGE:
    """MAGE-B as published, the reference."""
    return MAGE.from_config(CONFIGS["mage_vit_base_patch16"], **kwargs)


def mage_vit_large_patch16(**kwargs) -> MAGE:
    """MAGE-L as published, the reference."""
    return MAGE.from_config(CONFIGS["mage_vit_large_patch16"], **kwargs)


def mage_vit_tiny_test(**kwargs) -> MAGE:
    """The tiny configuration for CPU tests (not a published model), the reference."""
    return MAGE.from_config(CONFIGS["mage_vit_tiny_test"], **kwargs)
