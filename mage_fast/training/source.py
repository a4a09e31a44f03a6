"""Where a training run's micro-batches come from: an image folder (each image decoded, cropped
and tokenized at every step) or a token cache (ids of precomputed views, read from a memory map
a whole micro-batch at a time, with no image and no tokenizer in the step)."""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..data import ImageFolder
from ..runs.interrupt import ignore_interrupts
from ..runs.order import TrainOrder
from .batches import Labels, TokenBatches, TrainSamples
from .token_cache import TokenCache


@dataclass(frozen=True)
class DataSource:
    dataset: torch.utils.data.Dataset
    num_images: int
    input: str                    # the keyword the model's training forward takes the batch as
    description: str
    classes: List[str]            # the class subfolders' names (none: images directly in the folder)
    cache: Optional[TokenCache] = None

    @property
    def settings(self) -> Optional[dict]:
        """What a resumed run must read again, beside the data order: the token cache's settings
        (the checkpoint's train_state["token_cache"]); None for an image folder."""
        return self.cache.settings if self.cache else None

    def loader(self, order: TrainOrder, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
        """The micro-batches of `order`: (images or int16 ids, noise), and the labels of a
        class-conditional run."""
        if self.cache:  # the dataset takes a whole micro-batch's keys: one read each
            return torch.utils.data.DataLoader(self.dataset, sampler=order, batch_size=None, num_workers=workers,
                                               pin_memory=pin_memory, worker_init_fn=ignore_interrupts)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=order, num_workers=workers,
                                           pin_memory=pin_memory, worker_init_fn=ignore_interrupts)

    def check_tokenizer(self, model, weights: str):
        """A cache made with other tokenizer weights than the model's is refused."""
        if self.cache:
            self.cache.check_tokenizer(model, weights)


def data_source(data: Optional[str], tokens: Optional[str], seed: int,
                label_drop: Optional[Tuple[Optional[int], float]] = None, skip_unreadable: bool = False,
                views: Optional[str] = None) -> DataSource:
    """An image folder (`data`) or a token cache (`tokens`): one of them (TrainConfig checks).
    label_drop (num_classes, probability): a class-conditional run, whose batches carry labels,
    from the class subfolders (a cache: its index's), dropped with that probability; num_classes
    None: the data's number of classes. It needs at least two classes."""
    if views is not None:
        raise NotImplementedError("two-view batches")  # placeholder until the views land
    if tokens is not None:
        cache = TokenCache(tokens)
        classes, all_labels, where = cache.index["classes"], cache.index["labels"], f"the token cache {tokens}"
    else:
        folder = ImageFolder(data, skip_unreadable=skip_unreadable)
        classes, all_labels, where = folder.classes, folder.labels, data
    labels = None
    if label_drop is not None:
        num_classes, drop = label_drop
        if len(classes) < 2:
            raise ValueError(f"class-conditional training needs labels: {where} has {len(classes)} class(es); "
                             "give a folder with one subfolder per class (at least two)")
        if num_classes is not None and num_classes < len(classes):
            raise ValueError(f"num_classes is {num_classes} but {where} has {len(classes)} classes")
        labels = Labels(all_labels, num_classes or len(classes), drop, seed)
    if tokens is not None:
        return DataSource(TokenBatches(cache, seed, labels), cache.num_images, "tokens",
                          f"{cache.num_images} images x {cache.num_views} view(s) from the token cache {tokens}",
                          classes, cache)
    return DataSource(TrainSamples(folder, seed, labels=labels), len(folder), "images", f"{len(folder)} images",
                      classes)
