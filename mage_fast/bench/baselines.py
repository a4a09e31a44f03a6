"""The official script's generation (gen_img_uncond.py), as a baseline to time against: torch
Categorical sampling, softmax + gather, Gumbel noise drawn by numpy on the host, a sort."""
import math

import numpy as np
import torch

from ..configs import MASK_ID, NUM_TOKENS


def official_step(logits, ids, step, num_iter, temperature):
    unknown = ids == MASK_ID
    sampled = torch.distributions.Categorical(logits=logits.float()).sample()
    sampled = torch.where(unknown, sampled, ids)
    ratio = (step + 1) / num_iter
    probs = torch.softmax(logits.float(), -1)
    selected = torch.gather(probs, -1, sampled.unsqueeze(-1)).squeeze(-1)
    selected = torch.where(unknown, selected.double(), math.inf).float()
    mask_len = torch.tensor([math.floor(NUM_TOKENS * math.cos(math.pi / 2 * ratio))], device=ids.device)
    mask_len = torch.maximum(torch.ones_like(mask_len), torch.minimum(unknown.sum(-1, keepdim=True) - 1, mask_len))
    noise = torch.tensor(temperature * (1 - ratio) * np.random.gumbel(size=selected.shape), device=ids.device)
    confidence = torch.log(selected) + noise
    cut = torch.sort(confidence, -1).values[:, mask_len[0].long() - 1: mask_len[0].long()]
    return torch.where(confidence <= cut, MASK_ID, sampled), sampled


@torch.no_grad()
def official_generate(model, batch, num_iter, temperature, dtype=torch.float32):
    """Images [B, 3, 256, 256] the official way: eager, one step after another, VQGAN decode."""
    device = model.token_emb.word_embeddings.weight.device
    ids = torch.full((batch, NUM_TOKENS), MASK_ID, device=device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for step in range(num_iter):
            ids, filled = official_step(model.logits_unchecked(ids), ids, step, num_iter, temperature)
        return model.vqgan.decode(filled)
