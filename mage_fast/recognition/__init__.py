"""Recognition with MAGE encoders: cached features of an image folder, the official linear
probe, and few-shot logistic regression."""
from .encoder import build_encoder, load_encoder
from .extract import extract_features
from .fewshot import few_shot, fit_logistic, sample_shots
from .linprobe import LARS, linear_probe, topk_accuracy
from .store import FeatureSet, labelled_pair, load_features, save_features

__all__ = ["FeatureSet", "LARS", "build_encoder", "extract_features", "few_shot", "fit_logistic",
           "labelled_pair", "linear_probe", "load_encoder", "load_features", "sample_shots",
           "save_features", "topk_accuracy"]
