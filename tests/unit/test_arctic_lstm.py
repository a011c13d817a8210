"""Arctic LSTM / MLP speculator: heads, loss, training, lossless generation (beam search and top-k trees), recipes."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from transformers import HfArgumentParser

import train_speculator
from drafter import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig, AutoDrafter
from drafter.generation import SpeculativeGenerator, build_tree, topk_tree_candidates
from drafter.training.arguments import DataArguments, DrafterTrainingArguments, ModelArguments, flatten_recipe
from drafter.training.losses import drafter_loss
from drafter.training.run import drafter_config
from tests.fakes import hf_greedy, make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2
from tests.unit.test_training import make_trainer

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB, HIDDEN, WIDTH = 96, 32, 24
VARIANTS = [  # (method, tie_weights, tie_lstm_embs)
    ("sum_lstm", True, True),
    ("sum_lstm", True, False),
    ("sum_lstm", False, True),
    ("sum_lstm", False, False),
    ("sum_rnn", True, True),
    ("sum_rnn", False, True),
]


def make_speculator(seed: int = 0, **overrides) -> ArcticLSTMSpeculator:
    torch.manual_seed(seed)
    settings = dict(
        hidden_size=HIDDEN, vocab_size=VOCAB, base_model_name_or_path="tiny-random", n_speculator_heads=3,
        speculator_width=WIDTH,
    )
    settings.update(overrides)
    return ArcticLSTMSpeculator(ArcticLSTMSpeculatorConfig(**settings)).eval()


def features(base, input_ids):
    with torch.no_grad():
        return base.base_model(input_ids=input_ids)[0], base.get_input_embeddings()(input_ids)


def rms_norm(x, weight=None, bias=None, eps=1e-6):
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x if weight is None else weight * x + bias


def reference_forward(model: ArcticLSTMSpeculator, state: torch.Tensor, inds: torch.Tensor) -> torch.Tensor:
    """ArcticTraining's training forward (`ArcticLSTMSpeculator.forward(state, inds)`), written independently:
    separate gate projections/embeddings, state_weight/emb_weight from the formula, head i reading inds[:, i:i+T].

    state: (B, T, H); inds: (B, T + n) with inds[:, t] = token t+1. Returns (n, B, T, Vd)."""
    config = model.config
    n, width = config.n_speculator_heads, config.speculator_width
    state_weight = 0.5 ** (0.5 / n)
    emb_weight = math.sqrt((1 - state_weight**2) * (width / 2))
    alpha = emb_weight / state_weight
    if config.scale_input:
        state = rms_norm(state) / 2**0.5
    seq = state.shape[1]
    out = []
    cell = state.new_zeros(*state.shape[:-1], width)
    for i in range(n):
        shared = 0 if config.tie_weights else i
        proj = (1 if i >= 2 else i) if config.tie_weights else i
        tokens = inds[:, i : i + seq]
        weight = model.proj[proj].weight
        if config.method == "sum_rnn":
            z = model.emb[shared].weight[tokens]
            ln = model.ln[shared]
            state = torch.nn.functional.gelu(rms_norm(state @ weight.T + alpha * z, ln.weight, ln.bias))
        else:
            emb = model.emb[shared].weight
            gate_embs = [emb] * 4 if config.tie_lstm_embs else list(emb.split(width, dim=1))
            f_w, i_w, o_w, c_w = weight.split(width, dim=0)  # fused rows: forget, input, output, cell
            f_e, i_e, o_e, c_e = gate_embs
            forget = torch.sigmoid(state @ f_w.T + alpha * f_e[tokens])
            inp = torch.sigmoid(state @ i_w.T + alpha * i_e[tokens])
            cand = state @ c_w.T + alpha * c_e[tokens]
            cand = torch.nn.functional.gelu(rms_norm(cand, model.cell_ln[shared].weight, model.cell_ln[shared].bias))
            output = torch.sigmoid(state @ o_w.T + alpha * o_e[tokens])
            cell = cell * forget + cand * inp
            state_ln = model.state_ln[shared]
            state = torch.nn.functional.gelu(rms_norm(cell, state_ln.weight, state_ln.bias)) * output
        out.append(state @ model.head[shared].weight.T)
    return torch.stack(out)


# ----------------------------------------------------------------------------- model and loss
@pytest.mark.parametrize("make_base", [make_tiny_llama, make_tiny_gpt2])
@pytest.mark.parametrize("method, tie, tie_embs", VARIANTS)
def test_per_head_shapes_and_weight_sharing(make_base, method, tie, tie_embs):
    base = make_base()
    model = make_speculator(method=method, tie_weights=tie, tie_lstm_embs=tie_embs)
    input_ids = torch.randint(0, VOCAB, (2, 11))
    hidden, embeds = features(base, input_ids)
    logits = model(hidden, embeds, input_ids=input_ids)
    assert logits.shape == (3, 2, 11, VOCAB)
    shared = 1 if tie else 3
    assert len(model.head) == len(model.emb) == shared
    assert len(model.proj) == (2 if tie else 3)
    assert model.proj[0].in_features == HIDDEN and model.proj[1].in_features == WIDTH
    gates = 4 if method == "sum_lstm" else 1
    assert model.proj[0].out_features == gates * WIDTH
    emb_width = WIDTH if method == "sum_rnn" or tie_embs else 4 * WIDTH
    assert model.emb[0].weight.shape == (VOCAB, emb_width)
    norms = ["cell_ln", "state_ln"] if method == "sum_lstm" else ["ln"]
    assert all(len(getattr(model, name)) == shared for name in norms)
    assert model.num_draft_steps == 3 and model.consumes_token_ids


@pytest.mark.parametrize("method, tie, tie_embs", VARIANTS)
@pytest.mark.parametrize("scale_input", [True, False])
def test_matches_arctic_training_reference_forward(method, tie, tie_embs, scale_input):
    base = make_tiny_llama()
    model = make_speculator(method=method, tie_weights=tie, tie_lstm_embs=tie_embs, scale_input=scale_input)
    input_ids = torch.randint(0, VOCAB, (2, 10))
    hidden, embeds = features(base, input_ids)
    inds = torch.cat([input_ids[:, 1:], torch.zeros(2, 4, dtype=torch.long)], dim=1)  # as ArcticTraining pads
    with torch.no_grad():
        expected = reference_forward(model, hidden, inds)
        logits = model(hidden, embeds, input_ids=input_ids)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert model.alpha == pytest.approx(
        math.sqrt((1 - 0.5 ** (1 / 3)) * WIDTH / 2) / 0.5 ** (0.5 / 3)
    )


@pytest.mark.parametrize("method", ["sum_lstm", "sum_rnn"])
def test_loss_is_sum_over_heads_of_cross_entropy_two_ahead(method):
    base = make_tiny_llama()
    model = make_speculator(method=method)
    input_ids = torch.randint(0, VOCAB, (2, 9))
    labels = input_ids.clone()
    labels[0, 4] = -100
    hidden, embeds = features(base, input_ids)
    loss = drafter_loss(model, hidden, embeds, labels, num_steps=3, input_ids=input_ids).loss
    inds = torch.cat([input_ids[:, 1:], torch.zeros(2, 4, dtype=torch.long)], dim=1)
    preds = reference_forward(model, hidden, inds)  # head i at position t predicts token t + i + 2
    expected = 0.0
    for i in range(3):
        targets = labels[:, i + 2 :]
        head_logits = preds[i, :, : targets.shape[1]]
        expected = expected + torch.nn.functional.cross_entropy(
            head_logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100
        )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_needs_token_ids():
    base = make_tiny_llama()
    input_ids = torch.randint(0, VOCAB, (1, 5))
    hidden, embeds = features(base, input_ids)
    with pytest.raises(ValueError, match="input_ids"):
        make_speculator()(hidden, embeds)


def test_reduced_draft_vocabulary():
    base = make_tiny_llama()
    model = make_speculator(draft_vocab_size=8, n_speculator_heads=1)
    model.set_draft_vocabulary(torch.arange(10, 18))
    labels = torch.tensor([[0, 1, 10, 11, 50, 12, 60, 13]])
    hidden, embeds = features(base, labels)
    assert model(hidden, embeds, input_ids=labels).shape == (1, 1, 8, 8)
    out = drafter_loss(model, hidden, embeds, labels, 1, top_k=1, input_ids=labels)
    assert out.step_counts[0][:2] == (6, 2)  # targets 10 11 50 12 60 13; 50 and 60 outside the draft vocabulary
    assert model.emb[0].num_embeddings == VOCAB  # tokens fed are base ids; only the heads are reduced
    assert model.to_base_ids(torch.tensor([0, 7])).tolist() == [10, 17]


def test_config_validation_and_string_dims():
    config = ArcticLSTMSpeculatorConfig(hidden_size=HIDDEN, speculator_width="48", proj_dim="48", emb_dim=48)
    assert (config.speculator_width, config.proj_dim, config.emb_dim) == (48, 48, 48)
    assert ArcticLSTMSpeculatorConfig(hidden_size=HIDDEN).speculator_width == HIDDEN
    with pytest.raises(ValueError, match="must equal speculator_width"):
        ArcticLSTMSpeculatorConfig(hidden_size=HIDDEN, speculator_width=48, proj_dim=64)
    with pytest.raises(ValueError, match="dotted"):
        ArcticLSTMSpeculatorConfig(hidden_size=HIDDEN, speculator_width="48.48")
    with pytest.raises(ValueError, match="method"):
        ArcticLSTMSpeculatorConfig(method="lstm")


def test_save_load_round_trip(tmp_path):
    base = make_tiny_llama()
    model = make_speculator(method="sum_lstm", tie_lstm_embs=False, draft_vocab_size=40)
    model.set_draft_vocabulary(torch.randperm(VOCAB)[:40])
    model.save_pretrained(tmp_path / "s")
    loaded = AutoDrafter.from_pretrained(str(tmp_path / "s"))
    assert type(loaded) is ArcticLSTMSpeculator and loaded.config.tie_lstm_embs is False
    input_ids = torch.randint(0, VOCAB, (2, 7))
    hidden, embeds = features(base, input_ids)
    assert torch.equal(model(hidden, embeds, input_ids=input_ids), loaded(hidden, embeds, input_ids=input_ids))


@pytest.mark.parametrize("method", ["sum_lstm", "sum_rnn"])
def test_trainer_learns_pattern(tmp_path, method):
    base = make_tiny_llama()
    model = make_speculator(method=method, n_speculator_heads=2).train()
    trainer = make_trainer(tmp_path, base, model, max_steps=60, learning_rate=1e-2)
    untrained = trainer.evaluate()
    trainer.train()
    trained = trainer.evaluate()
    assert untrained["eval_step1_top1"] < 0.1
    assert trained["eval_step1_top1"] > 0.9 and trained["eval_step2_top1"] > 0.9, trained


# ----------------------------------------------------------------------------- generation
FAMILIES = {"llama": make_tiny_llama, "gpt2": make_tiny_gpt2, "qwen2": make_tiny_qwen2}


@pytest.mark.parametrize("seed", range(6))
def test_random_speculator_greedy_is_lossless(seed):
    family = list(FAMILIES)[seed % 3]
    base = FAMILIES[family](seed=seed)
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, VOCAB, (int(n),), generator=generator).tolist() for n in (1 + seed, 5, 9)]
    expected = [hf_greedy(base, p, 14) for p in prompts]
    method, tie, tie_embs = VARIANTS[seed % len(VARIANTS)]
    model = make_speculator(seed, method=method, tie_weights=tie, tie_lstm_embs=tie_embs)
    for options in (dict(beam_width=3), dict(beam_width=2, beam_length=3), dict(top_k_tokens_per_head=[3, 2, 2]),
                    dict(top_k_tokens_per_head=[1, 1, 1]), dict(top_k_tokens_per_head=[4, 2], n_candidates=5)):
        result = SpeculativeGenerator(base, model, **options).generate(prompts, max_new_tokens=14)
        assert result.sequences == expected, options


@pytest.fixture(scope="module")
def distilled():
    """Tiny speculators trained to memorise a tiny base model's greedy continuations of 48 prompts, so drafts
    from those prompts are mostly right (long accepted paths) and drafts past them mostly wrong."""
    base = make_tiny_llama(seed=3)
    generator = torch.Generator().manual_seed(0)
    sequences = []
    for _ in range(48):
        prompt = torch.randint(3, VOCAB, (3,), generator=generator).tolist()
        sequences.append(prompt + hf_greedy(base, prompt, 25))
    input_ids = torch.tensor(sequences)
    hidden, embeds = features(base, input_ids)
    speculators = {}
    for method in ("sum_lstm", "sum_rnn"):
        model = make_speculator(method=method, speculator_width=48).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(120):
            loss = drafter_loss(model, hidden, embeds, input_ids, 3, input_ids=input_ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        speculators[method] = model.eval()
    return base, sequences, speculators


@pytest.mark.parametrize("method", ["sum_lstm", "sum_rnn"])
@pytest.mark.parametrize(
    "options",
    [dict(beam_width=3), dict(top_k_tokens_per_head=[3, 2, 2]), dict(top_k_tokens_per_head=[1, 1, 1]),
     dict(top_k_tokens_per_head=[2, 2, 2], n_candidates=3, static_tree_size=True)],
)
def test_trained_speculator_accepts_many_tokens_and_stays_exact(distilled, method, options):
    base, sequences, speculators = distilled
    # Three memorised prompts run past their memorised length; one prompt was never seen.
    prompts = [sequences[0][:3], sequences[5][:3], sequences[7][:3], [4, 40, 77]]
    eos = hf_greedy(base, prompts[1], 40)[20]
    expected = [hf_greedy(base, p, 34, eos_token_id=eos) for p in prompts]
    result = SpeculativeGenerator(base, speculators[method], **options).generate(
        prompts, max_new_tokens=34, eos_token_id=eos
    )
    assert result.sequences == expected
    assert result.accepted_tokens_per_step > 1.5, result.accepted_tokens_per_step
    counts = result.accepted_by_position  # steps that accepted >= 1, >= 2, all 3 drafts: many full acceptances
    assert len(counts) == 3 and counts[2] >= 8 and result.num_steps > counts[0], (counts, result.num_steps)


def test_sampling_runs_with_topk_tree(distilled):
    base, sequences, speculators = distilled
    prompts = [sequences[0][:3], sequences[1][:3]]
    spec = SpeculativeGenerator(base, speculators["sum_lstm"], top_k_tokens_per_head=[2, 2, 2])
    first = spec.generate(prompts, max_new_tokens=12, temperature=0.8, seed=7)
    again = spec.generate(prompts, max_new_tokens=12, temperature=0.8, seed=7)
    assert first.sequences == again.sequences and all(len(s) == 12 for s in first.sequences)


def test_reduced_vocabulary_speculator_generation():
    base = make_tiny_llama(seed=2)
    model = make_speculator(2, draft_vocab_size=24)
    model.set_draft_vocabulary(torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:24])
    prompts = [[7, 8, 9], [20]]
    expected = [hf_greedy(base, p, 15) for p in prompts]
    for options in (dict(beam_width=4, beam_length=3), dict(top_k_tokens_per_head=[3, 3])):
        assert SpeculativeGenerator(base, model, **options).generate(prompts, max_new_tokens=15).sequences == expected


def test_topk_tree_candidates_form_the_product_tree(distilled):
    base, sequences, speculators = distilled
    model = speculators["sum_lstm"]
    input_ids = torch.tensor([sequences[0][:5], sequences[1][:5]])
    hidden, _ = features(base, input_ids)
    out = topk_tree_candidates(model, base.get_input_embeddings(), hidden[:, -1], input_ids[:, -1], [3, 2, 2])
    assert out.beams.shape == (2, 12, 4)
    assert (out.beams[:, :, 0] == input_ids[:, -1:]).all()
    assert all(len({tuple(b) for b in row.tolist()}) == 12 for row in out.beams)  # distinct paths
    assert (out.beam_log_probs[:, :-1] >= out.beam_log_probs[:, 1:]).all()  # best first
    torch.testing.assert_close(out.token_log_probs.sum(-1), out.beam_log_probs)
    assert build_tree(out.beams).num_nodes.tolist() == [1 + 3 + 6 + 12] * 2
    # The first head's candidates are the top-3 of its distribution; the best candidate is the greedy chain.
    chain = topk_tree_candidates(model, base.get_input_embeddings(), hidden[:, -1], input_ids[:, -1], [1, 1, 1])
    assert chain.beams.shape == (2, 1, 4)
    best = topk_tree_candidates(model, base.get_input_embeddings(), hidden[:, -1], input_ids[:, -1], [3, 2, 2], 4)
    assert best.beams.shape == (2, 4, 4) and torch.equal(best.beams, out.beams[:, :4])


def test_generator_options_are_validated():
    base = make_tiny_llama()
    model = make_speculator()
    with pytest.raises(ValueError, match="draft steps"):
        SpeculativeGenerator(base, model, top_k_tokens_per_head=[2, 2, 2, 2])
    with pytest.raises(ValueError, match="top_k_tokens_per_head"):
        SpeculativeGenerator(base, model, top_k_tokens_per_head=[2, 0])
    with pytest.raises(ValueError, match="needs top_k_tokens_per_head"):
        SpeculativeGenerator(base, model, n_candidates=3)
    spec = SpeculativeGenerator(base, model, top_k_tokens_per_head=[4, 3, 2], n_candidates=10)
    assert (spec.beam_width, spec.beam_length) == (10, 4)


# ----------------------------------------------------------------------------- recipes
ARCTIC_TRAINING_RECIPE = """
type: arctic-lstm-speculator
micro_batch_size: 64
gradient_accumulation_steps: 4
train_iters: 3000
model:
  name_or_path: meta-llama/Llama-3.1-8B-Instruct
  disable_activation_checkpoint: true
  method: sum_lstm
  proj_dim: "4096"
  emb_dim: "4096"
  speculator_width: "4096"
  speculator_tie_weights: true
  speculator_scale_input: true
  tie_lstm_embs: true
  n_speculator_heads: 3
tokenizer:
  name_or_path: meta-llama/Llama-3.1-8B-Instruct
data:
  sources:
    - type: huggingface
      name_or_path: llama31_8b_data
  cache_dir: data-cache
  max_length: 2048
scheduler:
  name: cosine
  warmup_ratio: 0.05
optimizer:
  betas: [0.9, 0.999]
  weight_decay: 0.1
  lr: 1e-3
checkpoint:
  - type: deepspeed
    save_every_n_steps: 600
    output_dir: spec-decode-llama31-8b/checkpoints
  - type: arctic-lstm-speculator
    save_end_of_training: true
    output_dir: spec-decode-llama31-8b
"""


def test_arctic_training_recipe_shape_parses(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(ARCTIC_TRAINING_RECIPE)
    model_args, data_args, training_args = train_speculator.parse_arguments([str(recipe)])
    assert model_args.drafter_type == "arctic_lstm"
    assert model_args.llm_name_or_path == "meta-llama/Llama-3.1-8B-Instruct"
    assert (model_args.method, model_args.n_speculator_heads) == ("sum_lstm", 3)
    assert (model_args.speculator_width, model_args.proj_dim, model_args.emb_dim) == (4096, 4096, 4096)
    assert model_args.tie_weights and model_args.scale_input and model_args.tie_lstm_embs
    assert (data_args.dataset_name, data_args.model_max_length) == ("llama31_8b_data", 2048)
    assert training_args.output_dir == "spec-decode-llama31-8b"
    assert (training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps) == (64, 4)
    assert training_args.max_steps == 3000 and training_args.learning_rate == 1e-3
    assert (training_args.adam_beta1, training_args.adam_beta2, training_args.weight_decay) == (0.9, 0.999, 0.1)
    assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_steps == 0.05
    assert training_args.save_strategy == "steps" and training_args.save_steps == 600
    # Command-line overrides win over the recipe.
    _, _, overridden = train_speculator.parse_arguments([str(recipe), "--max_steps", "10", "--output_dir", "o"])
    assert (overridden.max_steps, overridden.output_dir, overridden.learning_rate) == (10, "o", 1e-3)


def test_nested_recipe_with_training_section_and_errors():
    flat = flatten_recipe({
        "model": {"name_or_path": "m", "method": "sum_rnn", "tie_weights": False, "scale_input": "false"},
        "data": {"sources": ["sharegpt"], "num_eval_examples": 8},
        "checkpoint": {"output_dir": "out"},
        "training": {"max_steps": "20", "learning_rate": "3e-3"},
    })
    assert flat == {
        "llm_name_or_path": "m", "method": "sum_rnn", "tie_weights": False, "scale_input": False,
        "drafter_type": "arctic_lstm", "dataset_name": "sharegpt", "num_eval_examples": 8, "output_dir": "out",
        "max_steps": 20, "learning_rate": 3e-3,
    }
    with pytest.raises(ValueError, match="exactly one dataset"):
        flatten_recipe({"data": {"sources": ["a", "b"]}})
    with pytest.raises(ValueError, match="twice"):
        flatten_recipe({"checkpoint": {"output_dir": "a"}, "output_dir": "b"})
    with pytest.raises(ValueError, match="dotted"):
        flatten_recipe({"model": {"speculator_width": "4096.4096"}})
    parser = HfArgumentParser((ModelArguments, DataArguments, DrafterTrainingArguments))
    with pytest.raises(ValueError, match="not used"):  # unknown keys still fail
        parser.parse_dict(flatten_recipe({"model": {"widht": 3}}))


@pytest.mark.parametrize("name", ["smollm2-135m-arctic-lstm", "llama-3.1-8b-instruct-arctic-lstm"])
def test_shipped_arctic_recipes_parse(name):
    path = f"configs/{name}.yaml"
    raw = yaml.safe_load(open(path))
    assert {"model", "data", "checkpoint"} <= set(raw)
    # use_cpu: the Llama recipe asks for bf16, which TrainingArguments rejects on a machine without a GPU.
    model_args, data_args, training_args = train_speculator.parse_arguments([path, "--use_cpu", "true"])
    assert model_args.drafter_type == "arctic_lstm" and model_args.method == "sum_lstm"
    assert model_args.tie_weights and model_args.tie_lstm_embs
    assert data_args.dataset_name and training_args.output_dir and training_args.max_steps > 0


def test_flat_recipe_still_works(tmp_path):
    recipe = tmp_path / "flat.yaml"
    recipe.write_text(yaml.safe_dump({"drafter_type": "arctic_lstm", "method": "sum_rnn", "output_dir": "x"}))
    model_args, _, training_args = train_speculator.parse_arguments([str(recipe)])
    assert (model_args.drafter_type, model_args.method, training_args.output_dir) == ("arctic_lstm", "sum_rnn", "x")


def test_run_builds_arctic_config_for_the_base():
    base = make_tiny_llama()
    config = drafter_config(ModelArguments(drafter_type="arctic_lstm", n_speculator_heads=4, draft_vocab_size=50), base)
    assert isinstance(config, ArcticLSTMSpeculatorConfig)
    assert (config.hidden_size, config.vocab_size, config.speculator_width) == (HIDDEN, VOCAB, HIDDEN)
    assert (config.n_speculator_heads, config.draft_vocab_size, config.method) == (4, 50, "sum_lstm")
