"""Feature files: features with their labels, file names and class names, as `.npz` (numpy, no
pickle) or `.pt` (torch, loaded with weights_only), chosen by the file's extension."""
import json
import os
from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch

from ..files import atomic_write, to_json

FORMATS = (".npz", ".pt")


@dataclass
class FeatureSet:
    features: np.ndarray          # float32 [N, D]
    labels: np.ndarray            # int64 [N]; -1 for images from a folder without classes
    files: List[str]              # relative to the image folder, in dataset order
    classes: List[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # how the features were made: model, checkpoint, pool

    @property
    def dim(self) -> int:
        return self.features.shape[1]


def check_format(path: str):
    if not path.endswith(FORMATS):
        raise ValueError(f"feature files end with {' or '.join(FORMATS)}, got {path}")


def save_features(path: str, fs: FeatureSet):
    check_format(path)
    with atomic_write(path) as f:
        if path.endswith(".npz"):
            np.savez(f, features=fs.features, labels=fs.labels, files=np.array(fs.files, dtype=str),
                     classes=np.array(fs.classes, dtype=str), meta=np.array(to_json(fs.meta)))
        else:
            torch.save({"features": torch.from_numpy(fs.features), "labels": torch.from_numpy(fs.labels),
                        "files": fs.files, "classes": fs.classes, "meta": fs.meta}, f)


def load_features(path: str) -> FeatureSet:
    check_format(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                fs = FeatureSet(z["features"], z["labels"], z["files"].tolist(), z["classes"].tolist(),
                                json.loads(str(z["meta"])))
        else:
            d = torch.load(path, map_location="cpu", weights_only=True)
            fs = FeatureSet(d["features"].numpy(), d["labels"].numpy(), list(d["files"]),
                            list(d["classes"]), dict(d["meta"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a feature file written by `mage-fast features` "
                         f"(no {e})") from None
    if fs.features.ndim != 2 or len(fs.labels) != len(fs.features) or len(fs.files) != len(fs.features):
        raise ValueError(f"{path}: features {list(fs.features.shape)}, {len(fs.labels)} labels and "
                         f"{len(fs.files)} file names do not match")
    return fs


def labelled_pair(train: FeatureSet, val: FeatureSet) -> int:
    """Check that train and val features can go through one classifier; the number of classes."""
    for fs, name in ((train, "train"), (val, "val")):
        if len(fs.features) == 0:
            raise ValueError(f"the {name} file holds no features")
        if (fs.labels < 0).any():
            raise ValueError(f"the {name} features include images without labels: extract them from a "
                             "folder with one subfolder per class")
    if train.dim != val.dim:
        raise ValueError(f"feature dims differ: {train.dim} in train, {val.dim} in val "
                         "(features of different models?)")
    for key, flag in (("pool", "--pool"), ("model", "--model")):
        if key in train.meta and key in val.meta and train.meta[key] != val.meta[key]:
            raise ValueError(f"train features were made with {flag} {train.meta[key]}, val features with "
                             f"{flag} {val.meta[key]}: extract both alike")
    if train.classes and val.classes and train.classes != val.classes:
        raise ValueError("train and val have different classes: label i must name the same class in "
                         "both (give both folders the same class subfolders)")
    num_classes = len(train.classes) or int(train.labels.max()) + 1
    if val.labels.max() >= num_classes:
        raise ValueError(f"val has label {int(val.labels.max())}, beyond the {num_classes} classes of train")
    return num_classes
