"""The drafter family registry: the single source of family names (CLI choices, sweep grid values), of how a
fresh drafter's config is built from the training arguments, and of what `AutoDrafter` can load.

A new family is one `register_drafter_family(DrafterFamily(...))` call: it becomes loadable, trainable with
``--drafter_type NAME`` and usable as a sweep grid's ``family``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

from transformers import AutoConfig, AutoModel

from .arctic_lstm import ArcticLSTMSpeculator
from .base_drafter import DrafterConfig, DrafterPreTrainedModel
from .eagle3 import Eagle3Drafter, base_fields
from .redrafter import RecurrentDraftingModel


@dataclass(frozen=True)
class DrafterFamily:
    """One drafter family.

    Attributes:
        name: what users write (``--drafter_type``, a sweep grid's ``family``).
        model_class: the `DrafterPreTrainedModel` subclass; its `config_class` has the saved `model_type`.
        config_arguments: the training arguments (`ModelArguments` fields) that become config fields, by name.
        draft_tree: how sweeps draft with it by default: "beam" (beam search) or "topk" (per-head top-k tree).
        base_fields: config fields read from the base model's text config (e.g. attention sizes), if any.
    """

    name: str
    model_class: Type[DrafterPreTrainedModel]
    config_arguments: Tuple[str, ...]
    draft_tree: str = "beam"
    base_fields: Optional[Callable[[Any], Dict[str, Any]]] = None

    @property
    def config_class(self) -> Type[DrafterConfig]:
        return self.model_class.config_class

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    def build_config(self, arguments: Any, base_config: Any = None, **common: Any) -> DrafterConfig:
        """A fresh config: `config_arguments` read from `arguments` (an object or a mapping), the `base_fields`
        of `base_config` (the base model's text config; required by families with base fields), plus `common`
        (hidden size, vocabulary size, base model name, draft vocabulary size)."""
        read = arguments.get if isinstance(arguments, Mapping) else lambda key: getattr(arguments, key)
        from_base = {}
        if self.base_fields is not None:
            if base_config is None:
                raise ValueError(f"a fresh {self.name} drafter needs the base model's config")
            from_base = self.base_fields(base_config)
        return self.config_class(**{key: read(key) for key in self.config_arguments}, **from_base, **common)


FAMILIES: Dict[str, DrafterFamily] = {}
# A live list (argparse reads it when a parser is built), so a family registered later is a valid choice too.
FAMILY_NAMES: List[str] = []


def register_drafter_family(family: DrafterFamily) -> None:
    """Make a drafter family loadable (`AutoDrafter`, transformers' AutoConfig/AutoModel), trainable and
    sweepable under `family.name`."""
    if family.draft_tree not in ("beam", "topk"):
        raise ValueError(f"draft_tree must be 'beam' or 'topk', got {family.draft_tree!r}")
    FAMILIES[family.name] = family
    if family.name not in FAMILY_NAMES:
        FAMILY_NAMES.append(family.name)
    AutoConfig.register(family.model_type, family.config_class, exist_ok=True)
    AutoModel.register(family.config_class, family.model_class, exist_ok=True)


def get_family(name: str) -> DrafterFamily:
    """The family registered as `name`; a ValueError listing the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"Unknown drafter family '{name}': choose one of {FAMILY_NAMES}")
    return FAMILIES[name]


def family_of_model_type(model_type: str) -> DrafterFamily:
    """The family whose saved configs carry `model_type`; ValueError otherwise."""
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    known = sorted(f.model_type for f in FAMILIES.values())
    raise ValueError(f"'{model_type}' is not a drafter model type; known: {known}")


register_drafter_family(
    DrafterFamily(
        name="redrafter",
        model_class=RecurrentDraftingModel,
        config_arguments=("drafter_num_layers", "exit_dim_multiplier", "rnn", "drafter_predict_n_tokens"),
    )
)
register_drafter_family(
    DrafterFamily(
        name="arctic_lstm",
        model_class=ArcticLSTMSpeculator,
        config_arguments=(
            "n_speculator_heads", "speculator_width", "proj_dim", "emb_dim", "method", "tie_weights",
            "scale_input", "tie_lstm_embs",
        ),
        draft_tree="topk",
    )
)
register_drafter_family(
    DrafterFamily(
        name="eagle3",
        model_class=Eagle3Drafter,
        config_arguments=("eagle3_aux_layers", "eagle3_intermediate_size", "drafter_predict_n_tokens"),
        base_fields=base_fields,
    )
)
