"""The official forward's mask ratio: scipy.stats.truncnorm(...).rvs(1), drawn from numpy's
global RNG."""
import logging

import numpy as np
import torch

from ..reference.model import MAGE

log = logging.getLogger("mage_fast")


class InverseCdfTruncnorm:
    """scipy's truncnorm.rvs without scipy: one numpy.random.uniform per value, the draw scipy's
    rvs makes, through the inverse CDF (MAGE.mask_ratio_at, float64): scipy's values up to the
    last bits, which ceil(256 * ratio) does not see."""
    mask_ratio_at = MAGE.mask_ratio_at

    def __init__(self, low: float, high: float, mu: float, std: float):
        self.mask_ratio_min, self.mask_ratio_max, self.mask_ratio_mu, self.mask_ratio_std = low, high, mu, std

    def rvs(self, size=None):
        return self.mask_ratio_at(torch.as_tensor(np.random.uniform(size=size), dtype=torch.float64)).numpy()


def mask_ratio_generator(low: float, high: float, mu: float, std: float):
    """The official mask_ratio_generator: scipy's truncnorm where scipy imports, else (logged)
    InverseCdfTruncnorm."""
    try:
        from scipy import stats
    except ImportError:
        log.warning("scipy is not installed: the mask ratio is drawn by mage_fast's inverse CDF of the truncated "
                    "normal from numpy's global RNG (scipy's draw, its values up to the last bits)")
        return InverseCdfTruncnorm(low, high, mu, std)
    return stats.truncnorm((low - mu) / std, (high - mu) / std, loc=mu, scale=std)
