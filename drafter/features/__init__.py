"""The feature cache: the frozen base model run once over a tokenized dataset, its hidden states stored so that
training never runs the base model in the step (`python -m drafter.features`, `train_speculator.py
--features_dir DIR`)."""

from .build import FeatureSpec, build_features
from .cache import FEATURES_FORMAT_VERSION, FeatureCache, FeatureDataset, StaleFeaturesError

__all__ = [
    "FEATURES_FORMAT_VERSION",
    "FeatureCache",
    "FeatureDataset",
    "FeatureSpec",
    "StaleFeaturesError",
    "build_features",
]
