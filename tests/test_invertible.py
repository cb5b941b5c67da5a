"""Invertible (MAD-X) adapters at the embedding output and before the LM head, and switchable
embeddings for new vocabularies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ARCH_HEADS, HIDDEN, make_inputs, patched, perturb_adapter, run

from adapters import AdapterSetup, BatchSplit, Parallel, SeqBnConfig, SeqBnInvConfig, Stack
from adapters.methods.invertible import GLOWCoupling, NICECoupling

LM_HEADS = [(a, h) for a, h in ARCH_HEADS if h in ("mlm", "clm")]


@pytest.mark.parametrize("cls", [NICECoupling, GLOWCoupling])
@pytest.mark.parametrize("size", [32, 33])
def test_coupling_blocks_are_exact_inverses(cls, size):
    torch.manual_seed(0)
    block = cls(size, "relu", 2)
    for param in block.parameters():
        torch.nn.init.normal_(param, std=0.2)  # far from the identity
    x = torch.randn(3, 5, size)
    y = block(x)
    assert (y - x).abs().max() > 0.05
    torch.testing.assert_close(block(y, rev=True), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(block(block(x, rev=True)), x, atol=1e-5, rtol=0)


def _embedding_output(model, inputs, setup):
    """The output of the spec's embedding module (ELECTRA: before ``embeddings_project``, which may
    map ``embedding_size`` up to ``hidden_size``)."""
    spec = model._adapters_spec
    seen = []
    module = model.base_model.get_submodule(spec.embedding_output or spec.embeddings)
    hook = module.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        with torch.no_grad(), AdapterSetup(setup):
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


def _head_input(model, inputs, setup):
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        run(model, inputs, setup)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("inv", ["nice", "glow"])
@pytest.mark.parametrize("arch,head", LM_HEADS)
def test_block_runs_on_the_embedding_output_and_its_inverse_before_the_lm_head(arch, head, inv):
    model = patched(arch, head)
    model.add_adapter("lang", SeqBnInvConfig(inv_adapter=inv))
    perturb_adapter(model, "lang")
    block = model.base_model.invertible_adapters["lang"]
    inputs = make_inputs(arch)
    plain = _embedding_output(model, inputs, None)
    # Gemma 2: the block acts before the embedding's own √hidden factor (ArchitectureSpec.embedding_scale)
    scale = model.base_model.embed_tokens.embed_scale if arch == "gemma2" else 1.0
    torch.testing.assert_close(_embedding_output(model, inputs, "lang"), block(plain / scale) * scale, atol=1e-5, rtol=0)
    if arch == "gemma2":
        assert (block(plain / scale) * scale - block(plain)).abs().max() > 1e-3
    # the LM head computes its logits from A⁻¹ of the hidden state it is given
    head = model.get_output_embeddings()
    hidden = _head_input(model, inputs, "lang")  # a pre-hook sees the input before the inverse
    expected = torch.nn.functional.linear(block(hidden, rev=True), head.weight, head.bias)
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2 soft-caps its logits
    if cap is not None:
        expected = torch.tanh(expected / cap) * cap
    torch.testing.assert_close(run(model, inputs, "lang"), expected, atol=1e-5, rtol=0)
    assert (expected - torch.nn.functional.linear(hidden, head.weight, head.bias)).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_parallel_and_stack_choose_each_rows_first_block(arch):
    model = patched(arch)
    for name in ("de", "sw"):
        model.add_adapter(name, SeqBnInvConfig())
        perturb_adapter(model, name, seed=len(name) + ord(name[0]))
    model.add_adapter("task", SeqBnConfig())
    perturb_adapter(model, "task", seed=9)
    inputs = make_inputs(arch)
    alone = {n: run(model, inputs, Stack(n, "task")) for n in ("de", "sw")}
    out = run(model, inputs, Parallel(Stack("de", "task"), Stack("sw", "task")))
    torch.testing.assert_close(out[:2], alone["de"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2:], alone["sw"], atol=1e-5, rtol=0)
    split = run(model, inputs, BatchSplit(Stack("sw", "task"), Stack("de", "task"), batch_sizes=[1, 1]))
    torch.testing.assert_close(split[:1], alone["sw"][:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(split[1:], alone["de"][1:], atol=1e-5, rtol=0)
    # the first adapter *with* a block counts: task (none) then de
    embedded = _embedding_output(model, inputs, Stack("task", "de"))
    torch.testing.assert_close(embedded, _embedding_output(model, inputs, "de"))


def test_save_load_train_delete_and_unload(tmp_path):
    from safetensors.torch import load_file

    model = patched("bert", "mlm")
    model.add_adapter("lang", "seq_bn_inv")
    perturb_adapter(model, "lang")
    inputs = make_inputs("bert")
    expected = run(model, inputs, "lang")
    model.train_adapter("lang")
    assert all(p.requires_grad for p in model.base_model.invertible_adapters["lang"].parameters())
    model(**inputs).logits.sum().backward()
    assert model.base_model.invertible_adapters["lang"].F[0].weight.grad is not None
    model.eval()
    model.save_adapter(str(tmp_path), "lang")
    keys = set(load_file(str(tmp_path / "adapter.safetensors")))
    # AdapterHub's keys: from the head model's root (bert.)
    assert {"bert.invertible_adapters.lang.F.0.weight", "bert.invertible_adapters.lang.G.2.bias"} <= keys
    fresh = patched("bert", "mlm")
    fresh.load_adapter(str(tmp_path), set_active=True)
    torch.testing.assert_close(run(fresh, inputs), expected)
    rows = {r["name"]: r["#param"] for r in fresh.adapter_summary(as_dict=True)}
    blocks = sum(p.numel() for p in fresh.base_model.invertible_adapters["lang"].parameters())
    assert rows["lang"] == blocks + 2 * (HIDDEN * 2 + 2 + 2 * HIDDEN + HIDDEN)  # 2 layers, bottleneck 2
    fresh.delete_adapter("lang")
    assert "invertible_adapters" not in fresh.base_model._modules  # the last block takes its hooks with it
    assert type(fresh.bert.embeddings).__name__ == "BertEmbeddings"
    plain = patched("bert", "mlm")
    torch.testing.assert_close(run(fresh, inputs), run(plain, inputs))
    model.unload()
    assert type(model.bert.embeddings).__name__ == "BertEmbeddings" and type(model.cls.predictions.decoder) is torch.nn.Linear
    assert not any("invertible" in k for k in model.state_dict())


def _tokenizer(tmp_path, words):
    from transformers import BertTokenizer

    vocab = tmp_path / f"vocab{len(words)}.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return BertTokenizer(vocab=str(vocab))


@pytest.mark.parametrize("arch,head", [("bert", "mlm"), ("llama", "clm"), ("gpt2", "clm")])
def test_new_embeddings_switch_retie_and_round_trip(tmp_path, arch, head):
    reference = _tokenizer(tmp_path, [f"w{i}" for i in range(60)])
    new = _tokenizer(tmp_path, [f"w{i}" for i in range(30, 90)] + ["x", "y", "z"])
    model = patched(arch, head)
    model.add_adapter("lang", "seq_bn_inv")
    original = model.get_input_embeddings()
    # the model's own embedding holds the reference vocabulary's rows (ids beyond it: random)
    model.add_embeddings("new", new, reference_embedding="default", reference_tokenizer=reference)
    assert model.active_embeddings == "new" and model.get_input_embeddings().num_embeddings == len(new)
    weight = model.get_input_embeddings().weight
    for token in ("w30", "w59", "[MASK]"):
        torch.testing.assert_close(weight[new.get_vocab()[token]], original.weight[reference.get_vocab()[token]])
    assert model.config.vocab_size == len(new)
    ids = torch.tensor([[new.get_vocab()["x"], new.get_vocab()["w70"], 3]])
    with AdapterSetup("lang"), torch.no_grad():
        logits = model(input_ids=ids).logits
    output = model.get_output_embeddings()
    if output.weight is weight:  # tied heads follow the active embedding
        assert logits.shape[-1] == len(new)
    model.save_embeddings(str(tmp_path / "emb"), "new", tokenizer=new)
    model.set_active_embeddings("default")
    assert model.get_input_embeddings() is original and model.config.vocab_size == original.num_embeddings
    embedded = _embedding_output(model, make_inputs(arch), "lang")  # the invertible hook moved back
    block = model.base_model.invertible_adapters["lang"]
    torch.testing.assert_close(embedded, block(_embedding_output(model, make_inputs(arch), None)), atol=1e-5, rtol=0)
    fresh = patched(arch, head)
    tokenizer = fresh.load_embeddings(str(tmp_path / "emb"), "new")
    assert tokenizer.get_vocab() == new.get_vocab()
    torch.testing.assert_close(fresh.get_input_embeddings().weight, weight)
    with pytest.raises(ValueError, match="exists already"):
        fresh.load_embeddings(str(tmp_path / "emb"), "new")
    fresh.delete_embeddings("new")
    assert fresh.active_embeddings == "default"
    with pytest.raises(ValueError, match="Cannot delete embedding 'default'"):
        fresh.delete_embeddings("default")
    with pytest.raises(ValueError, match="Give both reference_embedding and reference_tokenizer"):
        fresh.add_embeddings("half", new, reference_embedding="default")
    with pytest.raises(ValueError, match="No embedding named 'nope'"):
        fresh.set_active_embeddings("nope")


def test_every_tied_lm_head_follows_the_active_embeddings(tmp_path):
    """An AdapterModel with an MLM head and a classification head: switching embeddings while the
    classification head is active still re-ties the MLM head's decoder (with a bias per
    embedding), so MLM logits are computed over the active vocabulary with its embedding matrix."""
    from conftest import CONFIGS

    from adapters import AutoAdapterModel

    reference = _tokenizer(tmp_path, [f"w{i}" for i in range(60)])
    new = _tokenizer(tmp_path, [f"v{i}" for i in range(40)])
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(CONFIGS["bert"]()).eval()
    model.add_masked_lm_head("mlm")
    model.add_classification_head("task", num_labels=3)  # active head: "task"
    decoder = model.heads["mlm"][3]
    default_bias = decoder.bias
    model.add_embeddings("new", new, reference_embedding="default", reference_tokenizer=reference)
    new_weight = model.get_input_embeddings().weight
    assert decoder.weight is new_weight and decoder.bias.shape == (len(new),)
    ids = torch.tensor([[2, 7, 9, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids, head="mlm").logits
        h = model.base_model(input_ids=ids).last_hidden_state
        head = model.heads["mlm"]
        h = F.layer_norm(F.gelu(F.linear(h, head[0].weight, head[0].bias)), h.shape[-1:], head[2].weight, head[2].bias, model.config.layer_norm_eps)
        expected = F.linear(h, new_weight, decoder.bias)
    assert logits.shape[-1] == len(new)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    model.set_active_embeddings("default")  # still with "task" active
    assert decoder.weight is model.get_input_embeddings().weight and decoder.bias is default_bias
    model.delete_embeddings("new")
    assert "new" not in decoder.__dict__["_adapters_embedding_biases"]


def test_invertible_adapter_added_while_a_classification_head_is_active_inverts_every_lm_head():
    """The inverse runs before the MLM head's decoder even when the adapter is added while another
    (non-LM) head is active."""
    from conftest import CONFIGS

    from adapters import AutoAdapterModel

    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(CONFIGS["bert"]()).eval()
    model.add_masked_lm_head("mlm")
    model.add_classification_head("task", num_labels=3)  # active head: "task"
    model.add_adapter("lang", config="seq_bn_inv")
    perturb_adapter(model, "lang")
    model.set_active_adapters("lang")
    block = model.base_model.invertible_adapters["lang"]
    head, ids = model.heads["mlm"], torch.tensor([[2, 7, 9, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids, head="mlm").logits
        h = model.base_model(input_ids=ids).last_hidden_state
        h = F.layer_norm(F.gelu(F.linear(h, head[0].weight, head[0].bias)), h.shape[-1:], head[2].weight, head[2].bias, model.config.layer_norm_eps)
        expected = F.linear(block(h, rev=True), head[3].weight, head[3].bias)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
