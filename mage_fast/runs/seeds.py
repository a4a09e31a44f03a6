"""Every random draw of a run is a function of (seed, stream, counters), never of a process's RNG
state: what makes a resume exact with no RNG state saved, and a global batch independent of how
it is split among processes (docs/mage.md#recipe). The streams of one seed are listed here, all
of them, so that no two uses share one."""
import numpy as np
import torch

# A run's data order and dropout (this package); pretraining's crops, mask ratios, noise, a token
# cache's views, label dropout, a contrastive run's two views of an image and the two of a token
# cache's it takes (training.batches); fine-tuning's RandAugment and mixup (finetune.samples),
# which also crops with CROP.
ORDER, CROP, RATIO, NOISE, DROPOUT, VIEW_CROP, VIEW, LABEL_DROP, CONTRAST_VIEW, VIEW_PAIR = range(10)
AUGMENT, MIXUP = 100, 101


def seed_of(*keys: int) -> int:
    """A 64-bit seed hashed from non-negative ints (SeedSequence: other keys, independent streams)."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0])


def generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*keys))


def seed_dropout(seed: int, micro: int, rank: int):
    """Seed the process RNG (dropout's, drop path's) for a micro-batch: each rank its own stream."""
    torch.manual_seed(seed_of(seed, DROPOUT, micro, rank))
