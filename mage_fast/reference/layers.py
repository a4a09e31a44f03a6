"""The transformer pieces of MAGE, computed as the official code computes them.

Parameter names match the official checkpoint (timm's Block/Mlp layout, BERT embeddings).
"""
import torch
import torch.nn.functional as F
from torch import nn


def attention_official(q, k, v, scale, dropout: nn.Module):
    """softmax(q k^T * scale) v on [B, H, N, d], the official way: scores in fp32 with
    autocast off, the row max subtracted (ViT-L gave NaN in fp16 without it)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    scores = scores - scores.amax(dim=-1, keepdim=True)
    probs = dropout(scores.softmax(dim=-1))
    return probs @ v


class Attention(nn.Module):
    def __init__(self, dim, num_heads, dropout):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)  # rows: q | k | v, heads contiguous
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = attention_official(q, k, v, self.scale, self.attn_drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth as timm 0.3.2 (the official fine-tuning's) draws it: in training, each
    sample's branch is kept where floor(1 - p + U[0, 1)) is 1 (probability 1 - p) and scaled by
    1/(1 - p). U is drawn in fp32 whatever x's dtype (timm draws in x's, whose bf16 or fp16
    spacing near 1 would round the keep probability), so every precision drops the same samples."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device)).floor_()
        return x.div(keep) * mask.to(x.dtype)


class Block(nn.Module):
    """Pre-LN transformer block (LayerNorm eps 1e-6, exact GELU). drop_path > 0 adds stochastic
    depth on both residual branches (fine-tuning); pretraining has none."""

    def __init__(self, dim, num_heads, mlp_ratio, dropout, attention=Attention, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BertEmbeddings(nn.Module):
    """word + position embedding -> LayerNorm(eps 1e-6) -> dropout."""

    def __init__(self, vocab_size, dim, max_positions, dropout):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        # Persistent, as in the official model: checkpoints carry it.
        self.register_buffer("position_ids", torch.arange(max_positions).expand((1, -1)))
        nn.init.normal_(self.word_embeddings.weight, std=0.02)
        nn.init.normal_(self.position_embeddings.weight, std=0.02)

    def forward(self, ids):
        positions = self.position_ids[:, : ids.shape[1]]
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class MlmLayer(nn.Module):
    """fc -> GELU -> LayerNorm (eps 1e-5, torch's default, unlike the rest) -> logits against
    the (detached, tied) word embeddings, plus a bias over the whole vocabulary."""

    def __init__(self, feat_dim, word_dim, vocab_size):
        super().__init__()
        self.fc = nn.Linear(feat_dim, word_dim)
        self.ln = nn.LayerNorm(word_dim, eps=1e-5)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab_size))

    def forward(self, x, word_embeddings):
        h = self.ln(F.gelu(self.fc(x)))
        return h @ word_embeddings.t() + self.bias


class PatchEmbed(nn.Module):
    """Unused by MAGE; registered only so official checkpoints load strictly."""

    def __init__(self, patch_size, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)


def label_smoothed_nll(logits, target, smoothing=0.1):
    """Per-row (1 - s) * NLL + s * mean over classes of -log p (the official criterion)."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return (1.0 - smoothing) * nll + smoothing * (-logp.mean(dim=-1))


def sincos_pos_embed(dim, grid_size):
    """Fixed 2-D sin-cos table with a zero row for the class token (MAE's layout)."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # grid_w varies along w
    table = torch.cat([one_axis(dim // 2, grid_w), one_axis(dim // 2, grid_h)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()
