"""One entry point for every drafter family: `AutoDrafter.from_pretrained(path)` dispatches on the saved
config's `model_type`."""

from __future__ import annotations

import json
import os
from typing import Dict, Type

from transformers import AutoConfig, AutoModel

from .arctic_lstm import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig
from .base_drafter import DrafterConfig, DrafterPreTrainedModel
from .redrafter import RecurrentDraftingConfig, RecurrentDraftingModel

DRAFTER_FAMILIES: Dict[str, Type[DrafterPreTrainedModel]] = {
    RecurrentDraftingConfig.model_type: RecurrentDraftingModel,
    ArcticLSTMSpeculatorConfig.model_type: ArcticLSTMSpeculator,
}


def register_drafter_family(config_class: Type[DrafterConfig], model_class: Type[DrafterPreTrainedModel]) -> None:
    """Make a drafter family loadable by AutoDrafter (and by transformers' AutoConfig/AutoModel)."""
    DRAFTER_FAMILIES[config_class.model_type] = model_class
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)


for _model_class in list(DRAFTER_FAMILIES.values()):
    register_drafter_family(_model_class.config_class, _model_class)


class AutoDrafter:
    """Loads any drafter saved with `save_pretrained`, whatever its family."""

    @staticmethod
    def from_pretrained(path: str, **kwargs) -> DrafterPreTrainedModel:
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"No drafter at '{path}': {config_file} does not exist")
        with open(config_file) as f:
            model_type = json.load(f).get("model_type")
        if model_type not in DRAFTER_FAMILIES:
            raise ValueError(
                f"'{path}' holds a '{model_type}' model, not a drafter; known families: {sorted(DRAFTER_FAMILIES)}"
            )
        return DRAFTER_FAMILIES[model_type].from_pretrained(path, **kwargs)

    @staticmethod
    def from_config(config: DrafterConfig) -> DrafterPreTrainedModel:
        return DRAFTER_FAMILIES[config.model_type](config)
