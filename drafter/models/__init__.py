"""Drafter heads only: the shared base class and protocol, the ReDrafter, Arctic LSTM and EAGLE-3 families, the family
registry and `AutoDrafter`. Imports nothing above `drafter.engine` / `drafter.store`."""

from .arctic_lstm import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig
from .auto import AutoDrafter
from .base_drafter import DrafterConfig, DrafterMismatchError, DrafterPreTrainedModel
from .eagle3 import Eagle3Config, Eagle3Drafter
from .redrafter import RecurrentDraftingConfig, RecurrentDraftingModel
from .registry import FAMILIES, FAMILY_NAMES, DrafterFamily, get_family, register_drafter_family

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "ArcticLSTMSpeculator",
    "ArcticLSTMSpeculatorConfig",
    "AutoDrafter",
    "DrafterConfig",
    "DrafterFamily",
    "DrafterMismatchError",
    "DrafterPreTrainedModel",
    "Eagle3Config",
    "Eagle3Drafter",
    "RecurrentDraftingConfig",
    "RecurrentDraftingModel",
    "get_family",
    "register_drafter_family",
]
