"""Model sizes: MAGE-B and MAGE-L as published, and a tiny configuration for CPU tests."""
from dataclasses import dataclass, field

IMAGE_SIZE = 256
TOKEN_GRID = 16                      # 256x256 pixels -> 16x16 tokens, raster order
NUM_TOKENS = TOKEN_GRID * TOKEN_GRID  # 256
SEQ_LEN = NUM_TOKENS + 1             # class token first
CODEBOOK_SIZE = 1024
VOCAB_SIZE = CODEBOOK_SIZE + 1000 + 1  # codebook, 1000 legacy class slots, mask
FAKE_CLASS_ID = 1100                 # the class token, always at position 0
MASK_ID = VOCAB_SIZE - 1             # 2024


@dataclass(frozen=True)
class VQGANConfig:
    """MaskGIT's VQGAN (converted from JAX): no attention, avg-pool downsampling."""
    ch: int = 128
    ch_mult: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = CODEBOOK_SIZE


@dataclass(frozen=True)
class MAGEConfig:
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    mlp_ratio: float = 4.0
    vqgan: VQGANConfig = field(default_factory=VQGANConfig)


MAGE_B = MAGEConfig(embed_dim=768, depth=12, num_heads=12,
                    decoder_embed_dim=768, decoder_depth=8, decoder_num_heads=16)
MAGE_L = MAGEConfig(embed_dim=1024, depth=24, num_heads=16,
                    decoder_embed_dim=1024, decoder_depth=8, decoder_num_heads=16)
# Not a published model: small enough for CPU and the Triton interpreter, with MAGE-B's head
# dims (64 in the encoder, 48 in the decoder) so the tests exercise both kernel shapes.
TINY_TEST = MAGEConfig(embed_dim=128, depth=2, num_heads=2,
                       decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=2,
                       vqgan=VQGANConfig(ch=32, num_res_blocks=1, z_channels=32))

CONFIGS = {
    "mage_vit_base_patch16": MAGE_B,
    "mage_vit_large_patch16": MAGE_L,
    "mage_vit_tiny_test": TINY_TEST,
}


def blocks_flops(depth: int, dim: int, n: int, mlp_ratio: float) -> float:
    """Forward matmul FLOPs of `depth` transformer blocks over n tokens, attention included."""
    linear = 2 * n * dim * dim * (3 + 1 + 2 * mlp_ratio)
    attention = 4 * n * n * dim
    return depth * (linear + attention)


def flops_per_image(cfg: MAGEConfig, seq_len: int, decoder_seq_len: int = SEQ_LEN) -> float:
    """Forward matmul FLOPs of the transformer (encoder over seq_len tokens, decoder over
    decoder_seq_len, MLM head over the 1024 codebook columns), attention included."""
    enc = blocks_flops(cfg.depth, cfg.embed_dim, seq_len, cfg.mlp_ratio)
    dec = blocks_flops(cfg.decoder_depth, cfg.decoder_embed_dim, decoder_seq_len, cfg.mlp_ratio)
    head = 2 * decoder_seq_len * (cfg.decoder_embed_dim * cfg.embed_dim + cfg.embed_dim * CODEBOOK_SIZE)
    embed = 2 * seq_len * cfg.embed_dim * cfg.decoder_embed_dim
    return float(enc + dec + head + embed)
