"""MaskGIT's VQGAN tokenizer as MAGE uses it (converted from JAX; not taming-transformers').

Module and parameter names follow the official checkpoint `vqgan_jax_strongaug.ckpt`
(`encoder.*`, `decoder.*`, `quantize.embedding.weight`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..configs import TOKEN_GRID, VQGANConfig


def group_norm(channels):
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)


def swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_out, c_out, 1, bias=False)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            # MaskGIT quirk, kept for checkpoint fidelity: when the width changes, the
            # "shortcut" is a 1x1 conv of the block's OUTPUT, not of its input.
            return self.nin_shortcut(h) + h
        return x + h


def _stage(c_in, c_out, num_blocks):
    stage = nn.Module()
    stage.block = nn.ModuleList(
        ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(num_blocks))
    return stage


def _middle(channels):
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        c_in = cfg.ch
        for width in widths:
            self.down.append(_stage(c_in, width, cfg.num_res_blocks))
            c_in = width
        self.mid = _middle(c_in)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, stage in enumerate(self.down):
            for block in stage.block:
                h = block(h)
            if i != len(self.down) - 1:
                h = F.avg_pool2d(h, kernel_size=2, stride=2)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(swish(self.norm_out(h)))


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        c_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = _middle(c_in)
        # up[i] mirrors down[i]; the decoder runs them from the coarsest (last) to up[0].
        stages = [None] * len(widths)
        for i in reversed(range(len(widths))):
            stages[i] = _stage(c_in, widths[i], cfg.num_res_blocks)
            if i != 0:
                stages[i].upsample = Upsample(widths[i])
            c_in = widths[i]
        self.up = nn.ModuleList(stages)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.block_1(h))
        for i in reversed(range(len(self.up))):
            for block in self.up[i].block:
                h = block(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def nearest_code(z, codebook):
    """Index of the nearest codebook row for each row of z [N, C], by plain L2 in fp32:
    |z|^2 + |e|^2 - 2 z.e, argmin (first index on ties), written as the official code does."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z, codebook = z.float(), codebook.float()
        d = (z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
             - 2 * torch.einsum("nc,ck->nk", z, codebook.t()))
        return d.argmin(1)


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size, dim):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)

    def forward(self, z):
        """z [B, C, H, W] -> ids [B, H*W] in raster order (index = h*W + w)."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        return nearest_code(flat, self.embedding.weight).view(b, h * w)

    def lookup(self, ids):
        """ids [B, H*W] -> z_q [B, C, H, W]."""
        b = ids.shape[0]
        z = self.embedding(ids).view(b, TOKEN_GRID, TOKEN_GRID, -1)
        return z.permute(0, 3, 1, 2).contiguous()


class VQGAN(nn.Module):
    quantizer = VectorQuantizer  # the codebook's class, which a subclass may extend

    def __init__(self, cfg: VQGANConfig = VQGANConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = self.quantizer(cfg.codebook_size, cfg.z_channels)

    def encode(self, images):
        """images [B, 3, 256, 256] in [0, 1] (no mean/std) -> ids [B, 256]."""
        return self.quantize(self.encoder(images))

    def decode(self, ids):
        """ids [B, 256] -> images [B, 3, 256, 256] clipped to [0, 1]."""
        return self.decoder(self.quantize.lookup(ids)).clamp(0.0, 1.0)
