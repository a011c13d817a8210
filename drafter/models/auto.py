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
        try:
            with open(config_file, encoding="utf-8") as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{config_file} is not valid JSON ({error})") from None
        model_type = config.get("model_type") if isinstance(config, dict) else None
        try:
            family = family_of_model_type(model_type)
        except ValueError:
            raise ValueError(f"'{path}' holds a '{model_type}' model, not a drafter") from None
        missing = [key for key in ("hidden_size", "vocab_size", *family.config_arguments) if key not in config]
        if missing:
            raise ValueError(f"{config_file} lacks {', '.join(missing)}: refusing to fill in defaults the drafter "
                             "may not have been trained with")
        weights = os.path.join(path, "model.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"No drafter weights at '{path}': {weights} does not exist")
        try:
            model, info = family.model_class.from_pretrained(path, output_loading_info=True, **kwargs)
        except Exception as error:  # a truncated or corrupt file surfaces as several error types
            raise ValueError(f"{weights} cannot be read ({type(error).__name__}: {error})") from None
        problems = {name: info.get(name) for name in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        problems = {name: sorted(map(str, keys)) for name, keys in problems.items() if keys}
        if problems:
            raise ValueError(f"{weights} does not match its config: " + "; ".join(
                f"{name.replace('_', ' ')} {keys[:5]}" for name, keys in problems.items()))
        return model

    @staticmethod
    def from_config(config: DrafterConfig) -> DrafterPreTrainedModel:
        return family_of_model_type(config.model_type).model_class(config)
