"""Token caches: the codebook ids of K fixed augmented views of every image of a folder, so that
training reads ids instead of decoding, cropping and tokenizing images at every step.

A cache is a folder that `mage-fast tokenize` writes (training/tokenize.py):
- tokens.npy: uint16 [N, K, 256] in numpy's .npy format, read memory-mapped; row (i, v) holds
  the ids of view v of image i (N x K x 512 bytes);
- index.json: strict JSON: the format and its version, N, K, the seed of the views, the
  transform's settings and the views' preset (augment), the model, the sha256 of the tokenizer
  weights and where they came from, the precision and device kind, then the image files
  (relative to the folder, in dataset order) with their sha1, classes and labels.
View v of image i is a view of the preset (views.PRESETS; "mage": the training transform,
RandomResizedCrop + flip) with its random numbers from a generator keyed by (seed, image, v)
(batches.view_generator); a center-crop cache holds one view per image, the evaluation
transform's (augment null).
"""
import hashlib
import json
import os
from typing import Optional

import numpy as np
import torch

from ..configs import CODEBOOK_SIZE, CONFIGS, NUM_TOKENS
from ..data import files_sha1

FORMAT, VERSION = "mage-fast token cache", 1
TOKENS, INDEX = "tokens.npy", "index.json"
DTYPE = np.uint16
# The tokenizer's weights that decide its ids: the VQGAN encoder and the codebook.
TOKENIZER_PREFIXES = ("encoder.", "quantize.")
# The index entries a reader uses (tokenize.py writes them all).
INDEX_KEYS = ("num_images", "num_views", "seed", "transform", "tokenizer_sha256", "files", "files_sha1", "classes",
              "labels")
SHOWN_ROWS = 5  # damaged rows a message names


def tokenizer_sha256(model) -> str:
    """sha256 over the tokenizer weights of a MAGE model (model.vqgan's encoder and codebook
    tensors: names, dtypes, shapes and bytes, in state_dict order)."""
    h = hashlib.sha256()
    for name, t in model.vqgan.state_dict().items():
        if name.startswith(TOKENIZER_PREFIXES):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name} {t.dtype} {list(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _not_a_cache(path: str, why: str) -> ValueError:
    return ValueError(f"{path} is not a usable token cache of `mage-fast tokenize` ({why}); make it again")


class TokenCache:
    """A token cache opened for reading, its index checked against its array: the array must be
    uint16 [N, K, 256] with the index's N and K, and the index's file list must match its sha1.
    The array is memory-mapped on first use, in each process that reads it."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"token cache not found: {path} (make one with `mage-fast tokenize`)")
        try:
            with open(os.path.join(path, INDEX)) as f:
                self.index = json.load(f)
        except FileNotFoundError:
            raise _not_a_cache(path, f"no {INDEX}") from None
        except json.JSONDecodeError as e:
            raise _not_a_cache(path, f"{INDEX} is not JSON: {e}") from None
        index = self.index
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise _not_a_cache(path, f"{INDEX} is not its index")
        if index.get("version") != VERSION:
            raise _not_a_cache(path, f"format version {index.get('version')}, this mage-fast reads {VERSION}")
        lacking = [k for k in INDEX_KEYS if k not in index]
        if lacking:
            raise _not_a_cache(path, f"{INDEX} lacks {', '.join(lacking)}")
        self.num_images, self.num_views = index["num_images"], index["num_views"]
        files, labels = index["files"], index["labels"]
        if len(files) != self.num_images or len(labels) != self.num_images:
            raise _not_a_cache(path, f"the index lists {len(files)} files and {len(labels)} labels "
                                     f"for {self.num_images} images")
        if files_sha1(files) != index["files_sha1"]:
            raise _not_a_cache(path, "the index's file list does not match its sha1")
        try:
            tokens = np.load(os.path.join(path, TOKENS), mmap_mode="r")
        except FileNotFoundError:
            raise _not_a_cache(path, f"no {TOKENS}") from None
        except (ValueError, EOFError) as e:  # not an .npy file, shorter than its header says, or empty
            raise _not_a_cache(path, f"{TOKENS}: {e}") from None
        want = (self.num_images, self.num_views, NUM_TOKENS)
        if tokens.shape != want or tokens.dtype != DTYPE:
            raise _not_a_cache(path, f"its index describes uint16 {list(want)}, but {TOKENS} holds "
                                     f"{tokens.dtype} {list(tokens.shape)}")
        self._tokens: Optional[np.ndarray] = None

    def __getstate__(self):  # DataLoader workers map the file themselves rather than copy it
        return {**self.__dict__, "_tokens": None}

    @property
    def tokens(self) -> np.ndarray:
        """The ids, uint16 [N, K, 256], memory-mapped read-only (row (i, v): view v of image i)."""
        if self._tokens is None:
            self._tokens = np.load(os.path.join(self.path, TOKENS), mmap_mode="r")
        return self._tokens

    @property
    def settings(self) -> dict:
        """What a resumed training run must read again: the same views of the same images."""
        return {k: self.index[k] for k in ("num_views", "seed", "transform", "files_sha1")}

    @property
    def augment(self) -> Optional[str]:
        """The views' preset (views.PRESETS); caches made before presets hold MAGE's crops."""
        return self.index.get("augment", "mage")

    def check_views(self, views: str):
        """A contrastive run takes two different views of each image, made with its preset."""
        if self.num_views < 2:
            raise ValueError(f"a contrastive run needs a token cache with at least 2 views per image; make one with "
                             f"mage-fast tokenize --views 2 --augment {views} (or more views; {self.path} holds "
                             f"{self.num_views})")
        if self.augment != views:
            raise ValueError(f"the token cache {self.path} holds {self.augment} views, this run asks for {views} "
                             f"views: make a cache with mage-fast tokenize --augment {views} --views K")

    def read(self, images: np.ndarray, views: np.ndarray) -> np.ndarray:
        """The ids of view views[j] of image images[j], uint16 [B, 256]: one read of the memory
        map in ascending row order (pages in file order), then put back in the batch's order."""
        flat = np.asarray(images, dtype=np.int64) * self.num_views + np.asarray(views, dtype=np.int64)
        order = np.argsort(flat, kind="stable")
        out = np.empty((len(flat), NUM_TOKENS), dtype=DTYPE)
        out[order] = np.take(self.tokens.reshape(-1, NUM_TOKENS), flat[order], axis=0)
        if out.size and out.max() >= CODEBOOK_SIZE:
            bad = flat[(out >= CODEBOOK_SIZE).any(1)].tolist()
            more = f" and {len(bad) - SHOWN_ROWS} more" if len(bad) > SHOWN_ROWS else ""
            raise ValueError(f"{self.path}: rows {bad[:SHOWN_ROWS]}{more} of {TOKENS} hold ids beyond the codebook "
                             f"({CODEBOOK_SIZE}): the file is damaged; make it again")
        return out

    def check_tokenizer(self, model, weights: str):
        """Refuse to train `model` on ids of other tokenizer weights; `weights` says where the
        model's came from."""
        ours, theirs = tokenizer_sha256(model), self.index["tokenizer_sha256"]
        cached = self.index.get("model")
        running = next((name for name, config in CONFIGS.items() if config == model.config), None)
        if ours != theirs and cached in CONFIGS and cached != running:
            raise ValueError(f"the token cache {self.path} holds the ids of a {cached}'s tokenizer, this run's model "
                             f"is a {running}: choose --model {cached}")
        if ours != theirs:
            made = self.index.get("tokenizer", "not recorded")
            raise ValueError(
                f"the token cache {self.path} was made with other tokenizer weights than this run's: "
                f"cache sha256 {theirs} (from {made}), run sha256 {ours} (from {weights}). Tokenize the images "
                "again with this run's tokenizer, or train with the tokenizer the cache was made with")
