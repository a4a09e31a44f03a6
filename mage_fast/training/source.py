"""Where a training run's micro-batches come from: an image folder (each image decoded, cropped
and tokenized at every step) or a token cache (ids of precomputed views, read from a memory map
a whole micro-batch at a time, with no image and no tokenizer in the step)."""
from dataclasses import dataclass
from typing import Optional

import torch

from ..data import ImageFolder
from .batches import TokenBatches, TrainOrder, TrainSamples
from .token_cache import TokenCache


@dataclass(frozen=True)
class DataSource:
    dataset: torch.utils.data.Dataset
    num_images: int
    input: str                    # the keyword the model's training forward takes the batch as
    description: str
    cache: Optional[TokenCache] = None

    @property
    def settings(self) -> Optional[dict]:
        """What a resumed run must read again, beside the data order: the token cache's settings
        (the checkpoint's train_state["token_cache"]); None for an image folder."""
        return self.cache.settings if self.cache else None

    def loader(self, order: TrainOrder, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
        """The micro-batches of `order`: (images or int16 ids, noise)."""
        if self.cache:  # the dataset takes a whole micro-batch's keys: one read each
            return torch.utils.data.DataLoader(self.dataset, sampler=order, batch_size=None,
                                               num_workers=workers, pin_memory=pin_memory)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=order, num_workers=workers,
                                           pin_memory=pin_memory)

    def check_tokenizer(self, model, weights: str):
        """A cache made with other tokenizer weights than the model's is refused."""
        if self.cache:
            self.cache.check_tokenizer(model, weights)


def data_source(data: Optional[str], tokens: Optional[str], seed: int) -> DataSource:
    """An image folder (`data`) or a token cache (`tokens`): one of them (TrainConfig checks)."""
    if tokens is not None:
        cache = TokenCache(tokens)
        return DataSource(TokenBatches(cache, seed), cache.num_images, "tokens",
                          f"{cache.num_images} images x {cache.num_views} view(s) from the token cache {tokens}",
                          cache)
    folder = ImageFolder(data)
    return DataSource(TrainSamples(folder, seed), len(folder), "images", f"{len(folder)} images")
