"""Export of Arctic LSTM / MLP speculators for vLLM + ArcticInference, and reading them back.

The expected tensor names below are the serving side's (established from the ArcticInference / ArcticTraining /
vLLM sources, see drafter/export/arctic.py and mlp_speculator.py); `serving_*_proposals` re-implement the serving
models' drafting from those tensors, so a wrong name, order or split fails here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from drafter import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig
from drafter.export import ExportError, export_speculator, load_exported
from drafter.export.__main__ import main as export_main
from tests.fakes import make_tiny_llama, make_tiny_redrafter

pytestmark = pytest.mark.usefixtures("single_thread")

V, H, W, N = 96, 32, 24, 3
ARCHS = ["LlamaForCausalLM"]


def make_speculator(seed: int = 0, **overrides) -> ArcticLSTMSpeculator:
    torch.manual_seed(seed)
    settings = dict(
        hidden_size=H, vocab_size=V, base_model_name_or_path="tiny-random", n_speculator_heads=N, speculator_width=W
    )
    settings.update(overrides)
    model = ArcticLSTMSpeculator(ArcticLSTMSpeculatorConfig(**settings)).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped weight/bias or cell/state norm shows
        for name, param in model.named_parameters():
            if "ln" in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, V, (2, 9), generator=generator)
    return torch.randn(2, 9, H, generator=generator), torch.randn(2, 9, H, generator=generator), input_ids


def logits_of(model, dtype=torch.float32):
    hidden, embeds, input_ids = inputs()
    with torch.no_grad():
        return model(hidden.to(dtype), embeds.to(dtype), input_ids=input_ids)


def shapes(folder):
    return {name: list(t.shape) for name, t in load_file(str(folder / "model.safetensors")).items()}


def rms(x, weight=None, bias=None, eps=1e-6):  # vLLM's MLPSpeculatorLayerNorm
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x if weight is None else weight * x + bias


def serving_lstm_proposals(folder, hidden, tokens, steps):
    """ArcticInference `ArcticLSTMSpeculator` (sum_lstm, tied, tie_lstm_embs) greedy drafting, from the files:
    load_weights concatenates {forget,input,output,cell}_proj.j into projs.j; generate_states repeats the forget
    embedding 4x, splits the gates in the order forget, input, output, cell."""
    config = json.loads((folder / "config.json").read_text())
    w = load_file(str(folder / "model.safetensors"))
    dim = int(config["proj_dim"])
    projs = [torch.cat([w[f"{g}_proj.{j}.weight"] for g in ("forget", "input", "output", "cell")]) for j in (0, 1)]
    sw = 0.5 ** (0.5 / config["n_predict"])
    alpha = math.sqrt((1 - sw**2) * int(config["inner_dim"]) / 2) / sw
    state = rms(hidden) / 2**0.5 if config["scale_input"] else hidden
    cell = torch.zeros(hidden.shape[0], int(config["inner_dim"]))
    out = []
    for i in range(steps):
        z4 = w["forget_emb.0.weight"][tokens].repeat(1, 4)
        added = torch.add(state @ projs[1 if i >= 2 else i].T, z4, alpha=alpha)
        fio, cand = added.split([3 * dim, dim], dim=-1)
        forget, inp, output = torch.sigmoid(fio).split([dim, dim, dim], dim=-1)
        cand = torch.nn.functional.gelu(rms(cand, w["cell_ln.0.weight"], w["cell_ln.0.bias"])) * inp
        cell = cell * forget + cand
        state = torch.nn.functional.gelu(rms(cell, w["state_ln.0.weight"], w["state_ln.0.bias"])) * output
        logits = state @ w["head.0.weight"].T
        tokens = logits.argmax(-1)
        out.append((tokens, logits))
    return out


def serving_mlp_proposals(folder, hidden, tokens, steps, arctic_names):
    """vLLM `MLPSpeculator` / ArcticInference sum_rnn drafting: proj(s).add_(emb(x), alpha), LN, GELU, head."""
    config = json.loads((folder / "config.json").read_text())
    w = load_file(str(folder / "model.safetensors"))
    sub = ".0" if arctic_names else ""
    tie, n = config["tie_weights"], config["n_predict"]
    inner = int(config["inner_dim"])
    sw = 0.5 ** (0.5 / n)
    alpha = math.sqrt((1 - sw**2) * inner / 2) / sw
    state = rms(hidden) / 2**0.5 if config["scale_input"] else hidden
    out = []
    for i in range(steps):
        k = 0 if tie else i
        p = (1 if i >= 2 else i) if tie else i
        z = w[f"emb.{k}{sub}.weight"][tokens]
        state = torch.add(state @ w[f"proj.{p}{sub}.weight"].T, z, alpha=alpha)
        state = torch.nn.functional.gelu(rms(state, w[f"ln.{k}{sub}.weight"], w[f"ln.{k}{sub}.bias"]))
        logits = state @ w[f"head.{k}.weight"].T
        tokens = logits.argmax(-1)
        out.append((tokens, logits))
    return out


def our_greedy_chain(model, hidden, tokens, steps):
    state = model.initial_state(hidden)
    out = []
    with torch.no_grad():
        for step in range(steps):
            state = model.advance_state(state, tokens, step)
            logits = model.compute_logits(hidden, state, step)
            tokens = logits.argmax(-1)
            out.append((tokens, logits))
    return out


def assert_same_chain(ours, serving):
    for (our_tokens, our_logits), (tokens, logits) in zip(ours, serving):
        assert torch.equal(our_tokens, tokens)
        torch.testing.assert_close(our_logits, logits, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- arctic format
def test_arctic_lstm_export_names_config_and_round_trip(tmp_path):
    model = make_speculator(method="sum_lstm", tie_weights=True, tie_lstm_embs=True, scale_input=True)
    result = export_speculator(model, tmp_path / "out", format="arctic", base_model_archs=ARCHS)
    folder = tmp_path / "out"
    expected = {f"{gate}_emb.0.weight": [V, W] for gate in ("forget", "input", "cell", "output")}
    for gate in ("forget", "input", "output", "cell"):
        expected[f"{gate}_proj.0.weight"] = [W, H]
        expected[f"{gate}_proj.1.weight"] = [W, W]
    expected.update({
        "cell_ln.0.weight": [W], "cell_ln.0.bias": [W], "state_ln.0.weight": [W], "state_ln.0.bias": [W],
        "head.0.weight": [V, W],
    })
    assert shapes(folder) == expected == result.tensors
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "architectures": ["ArcticLSTMSpeculatorPreTrainedModel"],
        "model_type": "mlp_speculator",
        "base_model_name_or_path": "tiny-random",
        "base_model_archs": ARCHS,
        "input_hidden_dim": H,
        "inner_dim": str(W),
        "proj_dim": str(W),
        "emb_dim": str(W),
        "vocab_size": V,
        "n_predict": N,
        "n_candidates": N,
        "top_k_tokens_per_head": [1, 1, 1],
        "tie_weights": True,
        "scale_input": True,
        "tie_lstm_embs": True,
        "method": "sum_lstm",
        "torch_dtype": "float32",
        "transformers_version": config["transformers_version"],
    }
    loaded = load_exported(folder)
    assert type(loaded) is ArcticLSTMSpeculator and loaded.config.method == "sum_lstm"
    assert torch.equal(logits_of(loaded), logits_of(model))
    assert torch.equal(logits_of(load_exported(str(folder))), logits_of(model))
    hidden, _, input_ids = inputs()
    assert_same_chain(
        our_greedy_chain(model, hidden[:, 0], input_ids[:, 0], N),
        serving_lstm_proposals(folder, hidden[:, 0], input_ids[:, 0], N),
    )
    assert result.serving_command == (
        f"vllm serve tiny-random --speculative-config "
        f"'{{\"method\": \"arctic\", \"model\": \"{folder.resolve()}\", \"num_speculative_tokens\": 3}}'"
    )


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("scale_input", [True, False])
def test_arctic_sum_rnn_export(tmp_path, tie, scale_input):
    model = make_speculator(method="sum_rnn", tie_weights=tie, scale_input=scale_input)
    export_speculator(model, tmp_path, format="arctic", base_model_archs=ARCHS, top_k_tokens_per_head=[4, 3, 2],
                      n_candidates=6)
    k, p = (1, 2) if tie else (N, N)
    expected = {f"emb.{i}.0.weight": [V, W] for i in range(k)}
    expected.update({f"proj.{j}.0.weight": [W, H if j == 0 else W] for j in range(p)})
    expected.update({f"ln.{i}.0.{param}": [W] for i in range(k) for param in ("weight", "bias")})
    expected.update({f"head.{i}.weight": [V, W] for i in range(k)})
    assert shapes(tmp_path) == expected
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["method"], config["tie_weights"], config["scale_input"]) == ("sum_rnn", tie, scale_input)
    assert (config["top_k_tokens_per_head"], config["n_candidates"]) == ([4, 3, 2], 6)
    assert torch.equal(logits_of(load_exported(tmp_path)), logits_of(model))
    hidden, _, input_ids = inputs()
    assert_same_chain(
        our_greedy_chain(model, hidden[:, 3], input_ids[:, 3], N),
        serving_mlp_proposals(tmp_path, hidden[:, 3], input_ids[:, 3], N, arctic_names=True),
    )


# ----------------------------------------------------------------------------- mlp_speculator format
@pytest.mark.parametrize("tie", [True, False])
def test_mlp_speculator_export(tmp_path, tie):
    model = make_speculator(method="sum_rnn", tie_weights=tie, scale_input=tie)
    result = export_speculator(model, tmp_path, format="mlp_speculator", base_model_archs=ARCHS)
    k, p = (1, 2) if tie else (N, N)
    expected = {f"emb.{i}.weight": [V, W] for i in range(k)}
    expected.update({f"proj.{j}.weight": [W, H if j == 0 else W] for j in range(p)})
    expected.update({f"ln.{i}.{param}": [W] for i in range(k) for param in ("weight", "bias")})
    expected.update({f"head.{i}.weight": [V, W] for i in range(k)})
    assert shapes(tmp_path) == expected
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["MLPSpeculatorPreTrainedModel"] and config["model_type"] == "mlp_speculator"
    # vLLM's MLPSpeculatorConfig: emb_dim is the base hidden size, inner_dim the speculator width.
    assert (config["emb_dim"], config["inner_dim"], config["vocab_size"], config["n_predict"]) == (H, W, V, N)
    assert len(config["top_k_tokens_per_head"]) == N and config["tie_weights"] is tie
    assert torch.equal(logits_of(load_exported(tmp_path)), logits_of(model))
    hidden, _, input_ids = inputs()
    assert_same_chain(
        our_greedy_chain(model, hidden[:, 2], input_ids[:, 2], N),
        serving_mlp_proposals(tmp_path, hidden[:, 2], input_ids[:, 2], N, arctic_names=False),
    )
    assert '"method": "mlp_speculator"' in result.serving_command


def test_bfloat16_export(tmp_path):
    model = make_speculator(method="sum_lstm")
    export_speculator(model, tmp_path, dtype="bfloat16", base_model_archs=ARCHS)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "model.safetensors")).values())
    loaded = load_exported(tmp_path, dtype=torch.bfloat16)
    assert torch.equal(logits_of(loaded, torch.bfloat16), logits_of(model.to(torch.bfloat16), torch.bfloat16))


def test_reads_arctic_training_checkpoint(tmp_path):
    """ArcticTraining saves `pytorch_model.bin` (its state dict: tied heads repeated as head.0..n-1) and a config
    with string dims; such a checkpoint loads too."""
    model = make_speculator(method="sum_lstm")
    export_speculator(model, tmp_path / "ours", base_model_archs=ARCHS)
    weights = load_file(str(tmp_path / "ours" / "model.safetensors"))
    weights.update({f"head.{i}.weight": weights["head.0.weight"] for i in range(N)})
    (tmp_path / "at").mkdir()
    torch.save(weights, tmp_path / "at" / "pytorch_model.bin")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    del config["base_model_archs"]
    (tmp_path / "at" / "config.json").write_text(json.dumps(config))
    assert torch.equal(logits_of(load_exported(tmp_path / "at")), logits_of(model))


# ----------------------------------------------------------------------------- errors and CLI
def test_export_errors(tmp_path):
    reduced = make_speculator(draft_vocab_size=40)
    for fmt in ("arctic", "mlp_speculator"):
        with pytest.raises(ExportError, match="cannot express a reduced draft vocabulary"):
            export_speculator(reduced, tmp_path, format=fmt)
        with pytest.raises(ExportError, match="ReDrafter"):
            export_speculator(make_tiny_redrafter(make_tiny_llama()), tmp_path, format=fmt)
    with pytest.raises(ExportError, match="tie_weights=True and tie_lstm_embs=True"):
        export_speculator(make_speculator(tie_lstm_embs=False), tmp_path)
    with pytest.raises(ExportError, match="tie_weights=True and tie_lstm_embs=True"):
        export_speculator(make_speculator(tie_weights=False), tmp_path)
    with pytest.raises(ExportError, match="sum_rnn"):
        export_speculator(make_speculator(method="sum_lstm"), tmp_path, format="mlp_speculator")
    with pytest.raises(ExportError, match="one per head"):
        export_speculator(make_speculator(), tmp_path, top_k_tokens_per_head=[2, 2], base_model_archs=ARCHS)
    assert not (tmp_path / "model.safetensors").exists()


def test_cli_exports_and_prints_serving_command(tmp_path, capsys):
    model = make_speculator(method="sum_lstm")
    model.save_pretrained(tmp_path / "trained")
    out = tmp_path / "vllm"
    code = export_main(["--format", "arctic", "--speculator_path", str(tmp_path / "trained"), "--output_dir", str(out),
                        "--serve_base_model", "meta-llama/Llama-3.1-8B-Instruct", "--tensor_parallel_size", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    # No base_model_archs could be read for 'tiny-random': the command disables ArcticInference's check.
    assert "note: base_model_archs unknown" in printed
    command = printed.strip().splitlines()[-1]
    assert command.startswith(
        "ARCTIC_INFERENCE_SKIP_SPEC_MODEL_CHECK=1 vllm serve meta-llama/Llama-3.1-8B-Instruct --tensor-parallel-size 2 "
        "--speculative-config "
    )
    spec = json.loads(command.split("--speculative-config ", 1)[1].strip("'"))
    assert spec == {"method": "arctic", "model": str(out.resolve()), "num_speculative_tokens": 3}
    assert torch.equal(logits_of(load_exported(out)), logits_of(model))

    assert export_main(["--read", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "sum_lstm"

    reduced = make_speculator(draft_vocab_size=40)
    reduced.save_pretrained(tmp_path / "reduced")
    assert export_main(["--speculator_path", str(tmp_path / "reduced"), "--output_dir", str(tmp_path / "x")]) == 2
    assert "reduced draft vocabulary" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "drafter.export", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--speculator_path" in result.stdout and "mlp_speculator" in result.stdout
