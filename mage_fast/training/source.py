"""Where a training run's micro-batches come from: an image folder (each image decoded, cropped
and tokenized at every step) or a token cache (ids of precomputed views, read from a memory map
a whole micro-batch at a time, with no image and no tokenizer in the step); for a contrastive
run, two views of each image from either."""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..data import ImageFolder
from ..runs.interrupt import ignore_interrupts
from ..runs.order import TrainOrder
from .batches import ContrastiveSamples, Labels, TokenBatches, TrainSamples
from .token_cache import TokenCache
from .views import PRESETS, ViewTransform


@dataclass(frozen=True)
class DataSource:
    dataset: torch.utils.data.Dataset
    num_images: int
    input: str                    # the keyword the model's training forward takes the batch as
    description: str
    classes: List[str]            # the class subfolders' names (none: images directly in the folder)
    cache: Optional[TokenCache] = None
    views: Optional[str] = None   # a contrastive run's views (a name of views.PRESETS); None: MAGE's batches

    @property
    def settings(self) -> Optional[dict]:
        """What a resumed run must read again, beside the data order: the token cache's settings
        and a contrastive run's views (the checkpoint's train_state["token_cache"]); None for an
        image folder, whose views the run records itself."""
        if not self.cache:
            return None
        return {**self.cache.settings, "views": self.views} if self.views else self.cache.settings

    def loader(self, order: TrainOrder, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
        """The micro-batches of `order`: (images or int16 ids, noise), and the labels of a
        class-conditional run; a contrastive run's hold two views per image: (images
        [B, 2, 3, 256, 256] or int16 ids [B, 2, 256], noise [B, 2, 256])."""
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
    None: the data's number of classes. It needs at least two classes. views (a name of
    views.PRESETS): a contrastive run, whose batches hold two views of each image and no labels;
    from a token cache, two of its views made with that preset (tokenize --augment)."""
    if views is not None:
        if label_drop is not None:
            raise ValueError("class-conditional and contrastive training cannot be combined")
        if views not in PRESETS:
            raise ValueError(f"views must be one of {sorted(PRESETS)}, got {views!r}")
    if tokens is not None:
        cache = TokenCache(tokens)
        if views is not None:
            cache.check_views(views)
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
        taken = f", 2 of them per image per epoch ({views})" if views else ""
        return DataSource(TokenBatches(cache, seed, labels, pairs=views is not None), cache.num_images, "tokens",
                          f"{cache.num_images} images x {cache.num_views} view(s){taken} from the token cache {tokens}",
                          classes, cache, views)
    if views is not None:
        return DataSource(ContrastiveSamples(folder, seed, ViewTransform(views)), len(folder), "images",
                          f"{len(folder)} images, 2 {views} views of each", classes, views=views)
    return DataSource(TrainSamples(folder, seed, labels=labels), len(folder), "images", f"{len(folder)} images",
                      classes)
