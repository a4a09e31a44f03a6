"""The tokenizer with the interface of the official one (taming's VQModel and VectorQuantizer2
as LTH14/mage builds them), on mage_fast's VQGAN: the same modules and keys, the fused codebook
search inside encode."""
import torch

from ..ops.vq import vq_nearest
from ..reference.vqgan import VQGAN, VectorQuantizer


class CodebookQuantizer(VectorQuantizer):
    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        """The official lookup: the codebook rows of `indices`, viewed as shape (B, H, W, C) and
        returned as [B, C, H, W] (shape None: the rows as they come)."""
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class VQModel(VQGAN):
    quantizer = CodebookQuantizer

    def encode(self, x: torch.Tensor):
        """The official (z_q [B, C, H, W], codebook loss, (None, None, ids [B*H*W])): z_q carries
        the straight-through gradient to the encoder output, the loss is taming's legacy form."""
        z = self.encoder(x)
        ids, z_q = vq_nearest(z, self.quantize.embedding.weight, return_vectors=True)
        loss = torch.mean((z_q.detach() - z) ** 2) + 0.25 * torch.mean((z_q - z.detach()) ** 2)
        return z + (z_q - z).detach(), loss, (None, None, ids.reshape(-1))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """The official decode: z_q [B, C, 16, 16] -> images, not clipped. Integer ids [B, 256]
        (mage_fast's own callers, such as detokenize, pass those) give mage_fast's decode: the
        images of the ids, clipped to [0, 1]."""
        if not torch.is_floating_point(quant):
            return super().decode(quant)
        return self.decoder(quant)
