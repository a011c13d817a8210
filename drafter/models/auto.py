"""One entry point for every drafter family: `AutoDrafter.from_pretrained(path)` dispatches on the saved
config's `model_type` through the family registry."""

from __future__ import annotations

import json
import os

from .base_drafter import DrafterConfig, DrafterPreTrainedModel
from .registry import family_of_model_type


class AutoDrafter:
    """Loads any drafter saved with `save_pretrained`, whatever its family."""

    @staticmethod
    def from_pretrained(path: str, **kwargs) -> DrafterPreTrainedModel:
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"No drafter at '{path}': {config_file} does not exist")
        with open(config_file) as f:
            model_type = json.load(f).get("model_type")
        try:
            family = family_of_model_type(model_type)
        except ValueError:
            raise ValueError(f"'{path}' holds a '{model_type}' model, not a drafter") from None
        return family.model_class.from_pretrained(path, **kwargs)

    @staticmethod
    def from_config(config: DrafterConfig) -> DrafterPreTrainedModel:
        return family_of_model_type(config.model_type).model_class(config)
