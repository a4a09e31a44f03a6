"""A MAGE model for feature extraction, from an official MAGE or a MAGE-C checkpoint.

Features only need the encoder side: the tokenizer (`vqgan.*`), the token embedding, the
encoder blocks and, for the class-token feature, the final `norm`. The rest of a checkpoint
(decoder, MLM head, a contrastive head in MAGE-C) is ignored and reported by name.
"""
import logging
from typing import Optional

from ..checkpoint import LoadReport, load_checkpoint
from ..model import build_model
from ..reference import MAGE

log = logging.getLogger(__name__)

# A constant arange that the model builds itself; converted checkpoints may leave it out.
OPTIONAL_KEYS = ("token_emb.position_ids",)


def encoder_prefixes(pool: str):
    """The state_dict prefixes that features with this pooling read."""
    return ("vqgan.", "token_emb.", "blocks.") + (("norm.",) if pool == "cls" else ())


def load_encoder(model: MAGE, ckpt: str, vqgan_ckpt: Optional[str] = None, pool: str = "avg",
                 trusted: bool = False) -> LoadReport:
    """Load what features with this pooling need from `ckpt` (and the tokenizer from
    `vqgan_ckpt`, which wins over the checkpoint's own `vqgan.*`). Raises a ValueError naming
    what is missing; the report's `unexpected` lists the checkpoint keys that were ignored."""
    report = load_checkpoint(model, ckpt, vqgan_ckpt, strict=False, trusted=trusted,
                             prefixes=encoder_prefixes(pool))
    missing = [k for k in report.missing if k not in OPTIONAL_KEYS]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        hint = ("; it holds no tokenizer: give the VQGAN checkpoint too (--vqgan-ckpt)"
                if any(k.startswith("vqgan.") for k in missing) else "")
        raise ValueError(f"{ckpt} lacks {len(missing)} tensors the encoder needs: {shown}{hint}")
    return report


def build_encoder(model_name: str, ckpt: Optional[str] = None, vqgan_ckpt: Optional[str] = None,
                  pool: str = "avg", trusted: bool = False, impl: str = "fast") -> MAGE:
    """The model in eval mode with its encoder loaded. Without `ckpt` the transformer keeps
    random weights, drawn from seed 0 so that every process and every resumed run agrees."""
    model = build_model(model_name, impl).eval()
    if ckpt is None:
        if vqgan_ckpt is not None:
            load_checkpoint(model, vqgan_ckpt=vqgan_ckpt, trusted=trusted)
        return model
    report = load_encoder(model, ckpt, vqgan_ckpt, pool, trusted)
    log.info("loaded %d tensors from %s%s", report.loaded, ckpt, f" and {vqgan_ckpt}" if vqgan_ckpt else "")
    if report.unexpected:
        log.info("ignored %d checkpoint keys that features do not use: %s", len(report.unexpected),
                 ", ".join(report.unexpected))
    return model
