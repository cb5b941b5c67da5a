"""AdapterHub 1.3.0's head API and marker names (issue 23): ``ADAPTER_MODEL_MAPPING``,
``adapters.wrappers`` (``load_model``, ``init``, ``init_adapters_config``), heads on transformers'
own head models (``save_head`` / ``load_head`` / labels, static -> flexible conversion, heads beside
adapters), ``average_head``, ``get_prediction_heads_config``, ``PredictionHead.build``, the
top-level head classes, labels reaching pipelines, and the marker classes the suite gates on
(``ModelWithHeadsAdaptersMixin``, ``InvertibleAdaptersMixin`` and the invertible-adapter methods,
``LoRALayer``, ``adapters.configuration.adapter_config``). AdapterHub-written files:
tests/fixtures/adapterhub_heads (utils/make_adapterhub_head_fixtures.py, ~100 KB)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers

import adapters
from adapters import AdapterConfigError, AdapterLoadError, AutoAdapterModel, Stack

from conftest import CONFIGS, make_inputs, make_model, patched, perturb

HEAD_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapterhub_heads")


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _static(arch="bert", head="seq_cls", seed=0):
    model = patched(arch, head, seed)
    perturb(model, seed=seed + 7)  # heads and base away from their initialisation
    if hasattr(model, "final_logits_bias"):  # BART's LM head bias is a buffer of the head model itself
        model.final_logits_bias.normal_(generator=torch.Generator().manual_seed(seed))
    return model


# -- ADAPTER_MODEL_MAPPING ----------------------------------------------------------------------------
def test_adapter_model_mapping_maps_each_config_class_to_its_adapter_model_class():
    from adapters.heads.adapter_model import ADAPTER_MODEL_CLASSES, ADAPTER_MODEL_TABLE

    mapping = adapters.ADAPTER_MODEL_MAPPING
    assert len(mapping) == len(ADAPTER_MODEL_TABLE) == len(list(mapping))
    for model_type, (class_name, config_name, _, _) in ADAPTER_MODEL_TABLE.items():
        config_class = getattr(transformers, config_name)
        assert config_class in mapping
        assert mapping[config_class] is ADAPTER_MODEL_CLASSES[model_type]
        assert mapping[config_class].__name__ == class_name
    # the same class AutoAdapterModel builds
    config = CONFIGS["bert"]()
    assert isinstance(AutoAdapterModel.from_config(config), mapping[transformers.BertConfig])
    assert transformers.CLIPTextConfig not in mapping  # CLIP's towers have no AdapterModel of their own
    with pytest.raises(KeyError):
        mapping[transformers.CLIPTextConfig]
    # AdapterHub's architectures are all there
    for name in ("Beit", "BertGeneration", "Deberta", "PLBart", "Xmod", "Albert", "GPTJ", "Whisper", "MT5"):
        assert getattr(transformers, f"{name}Config") in mapping


# -- adapters.wrappers ----------------------------------------------------------------------------------
def test_load_model_loads_the_weights_then_patches_the_model(tmp_path):
    from adapters.wrappers import init, init_adapters_config, load_model

    assert init is adapters.init and load_model is adapters.load_model and init_adapters_config is adapters.init_adapters_config
    static = make_model("bert", "seq_cls")
    perturb(static, seed=3)
    static.save_pretrained(tmp_path / "m")
    inputs = make_inputs("bert")
    loaded = load_model(str(tmp_path / "m"), transformers.AutoModelForSequenceClassification)
    assert isinstance(loaded, adapters.ModelAdaptersMixin) and type(loaded).__name__ == "BertForSequenceClassification"
    torch.testing.assert_close(_logits(loaded.eval(), inputs), _logits(static, inputs), rtol=0, atol=0)
    loaded.add_adapter("a", config="lora", set_active=True)  # patched: adapters work at once
    assert loaded.adapters_config.active_setup is not None
    assert loaded.base_model.adapter_interface is None  # a built-in spec, no interface
    # with an interface (AdapterHub's plug-in models): the base model carries it
    interface = adapters.AdapterModelInterface(
        adapter_methods=["lora"], model_embeddings="embeddings", model_layers="encoder.layer",
        layer_self_attn="attention", layer_cross_attn=None, attn_q_proj="self.query", attn_k_proj="self.key",
        attn_v_proj="self.value", attn_o_proj="output.dense", layer_intermediate_proj="intermediate.dense",
        layer_output_proj="output.dense",
    )
    plugged = load_model(str(tmp_path / "m"), transformers.BertModel, interface=interface)
    assert plugged.base_model.adapter_interface == interface and plugged.adapter_interface == interface
    plugged.save_pretrained(str(tmp_path / "plugged"))  # writes adapter_interface.json: load_model finds it
    assert os.path.isfile(tmp_path / "plugged" / "adapter_interface.json")
    assert load_model(str(tmp_path / "plugged"), transformers.BertModel).adapter_interface == interface
    # an AdapterModel class patches itself; load_model leaves it so
    flex = load_model(str(tmp_path / "m"), AutoAdapterModel)
    assert flex.active_head == "default"
    torch.testing.assert_close(_logits(flex.eval(), inputs), _logits(static, inputs), rtol=1e-5, atol=1e-6)


def test_init_adapters_config_patches_and_returns_the_registry():
    from adapters.wrappers import init_adapters_config

    model = make_model("bert")
    registry = init_adapters_config(model, model.config)
    assert registry is model.adapters_config and isinstance(registry, adapters.ModelAdaptersConfig)
    assert init_adapters_config(model, model.config) is registry  # patched already: the same registry
    with pytest.raises(AdapterConfigError, match="patched already"):
        init_adapters_config(model, model.config, adapters.ModelAdaptersConfig())
    # an unpatched model with a registry: its adapters are built (AdapterHub's use of the helper)
    model.add_adapter("a", config="seq_bn")
    fresh = make_model("bert")
    registry = init_adapters_config(fresh, fresh.config, adapters.ModelAdaptersConfig(**model.adapters_config.to_dict()))
    assert list(registry.adapters) == ["a"] and registry.adapters["a"] == model.adapters_config.adapters["a"]
    assert any(".adapters.a." in name for name, _ in fresh.named_parameters())


def test_init_adapters_config_that_fails_leaves_the_model_config_unchanged():
    import copy

    from adapters.wrappers import init_adapters_config

    model = make_model("bert")
    original = model.config
    other = copy.deepcopy(model.config)
    with pytest.raises((AdapterConfigError, AdapterLoadError, ValueError, TypeError)):
        init_adapters_config(model, other, {"adapters": {"a": "no_such_config_id"}})
    assert model.config is original and "_adapters_registry" not in model.__dict__


# -- static heads on transformers' head models ----------------------------------------------------------
def test_static_head_is_saved_in_adapterhubs_layout_and_loads_back(tmp_path):
    model = _static()
    model.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    model.config.label2id = {"neg": 0, "neu": 1, "pos": 2}
    assert isinstance(model, adapters.ModelWithHeadsAdaptersMixin)
    assert model.get_labels() == ["neg", "neu", "pos"] and model.get_labels_dict() == {0: "neg", 1: "neu", 2: "pos"}
    model.save_head(str(tmp_path / "head"))
    assert sorted(os.listdir(tmp_path / "head")) == ["head_config.json", "model_head.safetensors"]
    meta = json.loads((tmp_path / "head" / "head_config.json").read_text())
    assert meta["config"] is None and meta["name"] is None  # AdapterHub's static head: no flexible config, no name
    assert meta["model_class"] == "BertForSequenceClassification" and meta["num_labels"] == 3
    assert meta["label2id"] == {"neg": 0, "neu": 1, "pos": 2} and meta["hidden_size"] == model.config.hidden_size
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "head" / "model_head.safetensors"))
    assert sorted(saved) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(saved["classifier.weight"], model.classifier.weight)

    other = patched("bert", "seq_cls", seed=5)
    inputs = make_inputs("bert")
    assert other.load_head(str(tmp_path / "head")) is None  # a static head has no name (AdapterHub returns None)
    assert torch.equal(other.classifier.weight, model.classifier.weight) and torch.equal(other.classifier.bias, model.classifier.bias)
    assert other.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and other.get_labels() == ["neg", "neu", "pos"]
    assert not torch.equal(other.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
    # id2label given: it wins over the saved labels
    other.load_head(str(tmp_path / "head"), id2label={0: "x", 1: "y", 2: "z"})
    assert other.get_labels() == ["x", "y", "z"]
    # AdapterHub's .bin on request, and save_all_heads
    model.save_all_heads(str(tmp_path / "all"), use_safetensors=False)
    assert sorted(os.listdir(tmp_path / "all")) == ["head_config.json", "pytorch_model_head.bin"]
    again = patched("bert", "seq_cls", seed=6)
    again.load_head(str(tmp_path / "all"))
    torch.testing.assert_close(_logits(again, inputs)[:, :0], _logits(model, inputs)[:, :0])
    assert torch.equal(again.classifier.weight, model.classifier.weight)


def test_static_head_of_another_class_is_refused_and_leaves_the_model_unchanged(tmp_path):
    from conftest import assert_unchanged, model_state

    _static().save_head(str(tmp_path / "head"))
    tagger = adapters.init(transformers.BertForTokenClassification(make_model("bert", "seq_cls").config).eval())
    before = model_state(tagger)
    with pytest.raises(AdapterLoadError, match="BertForSequenceClassification.*AdapterModel"):
        tagger.load_head(str(tmp_path / "head"))
    assert_unchanged(tagger, before)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tagger.load_head(str(tmp_path / "head"), lod_as="x")
    # a base model has no head to save; a static head model cannot average heads (AdapterHub: AttributeError)
    with pytest.raises(AdapterConfigError, match="average_head.*convert_to_adapter_model"):
        _static().average_head("avg", ["default"])
    assert not isinstance(patched("bert"), adapters.ModelWithHeadsAdaptersMixin)


@pytest.mark.parametrize("arch,head", [("bert", "seq_cls"), ("roberta", "mlm"), ("bart", "seq2seq"), ("t5", "seq2seq"), ("gpt2", "clm")])
def test_static_head_loads_into_an_adapter_model_as_a_flexible_head_with_the_same_outputs(tmp_path, arch, head):
    """AdapterHub's static -> flex conversion: the head saved from a transformers head model becomes
    flexible head ``load_as`` of an AdapterModel over the same base weights, with the same outputs
    (T5's LM model holds its base model's parts itself: its head is ``lm_head`` alone)."""
    static = _static(arch, head)
    static.save_head(str(tmp_path / "head"))
    static.save_pretrained(str(tmp_path / "model"))
    again_static = _static(arch, head, seed=4)
    again_static.load_head(str(tmp_path / "head"))  # the head, own tensors included, into the same class
    own = static._static_head_parameters()  # a tied LM matrix is the base model's input embedding, not the head's
    assert all(torch.equal(value, again_static.state_dict()[key]) for key, value in own.items())
    flex = AutoAdapterModel.from_pretrained(str(tmp_path / "model")).eval()
    flex.delete_head("default")  # the head from_pretrained converted; this test converts the saved file
    with pytest.raises(AdapterLoadError, match="load_as"):
        flex.load_head(str(tmp_path / "head"))
    assert flex.load_head(str(tmp_path / "head"), load_as="task") == "task"
    assert flex.active_head == "task"
    inputs = make_inputs(arch)
    torch.testing.assert_close(_logits(flex, inputs), _logits(static, inputs), rtol=1e-5, atol=1e-5)
    if head == "mlm":  # the tied decoder stays the input embedding (not overwritten from the file)
        decoder = flex.heads["task"].get_output_embeddings()
        assert decoder.weight is flex.get_input_embeddings().weight
    # and on as a flexible head: saved from the AdapterModel, loaded into another
    flex.save_head(str(tmp_path / "flex_head"), "task")
    again = AutoAdapterModel.from_pretrained(str(tmp_path / "model")).eval()
    assert again.load_head(str(tmp_path / "flex_head"), overwrite_ok=True) == "task"
    torch.testing.assert_close(_logits(again, inputs), _logits(static, inputs), rtol=1e-5, atol=1e-5)


def test_save_adapter_with_head_on_a_static_model_and_load_it_on_both_kinds(tmp_path):
    static = _static()
    static.add_adapter("a", config="seq_bn")
    perturb(static.bert.encoder, seed=2)
    static.save_adapter(str(tmp_path / "a"), "a")
    assert {"head_config.json", "model_head.safetensors", "adapter_config.json", "adapter.safetensors"} <= set(os.listdir(tmp_path / "a"))
    static.save_adapter(str(tmp_path / "no_head"), "a", with_head=False)
    assert "head_config.json" not in os.listdir(tmp_path / "no_head")
    static.set_active_adapters("a")
    inputs = make_inputs("bert")
    expected = _logits(static, inputs)

    other = patched("bert", "seq_cls", seed=9)
    other.bert.load_state_dict({k: v for k, v in static.bert.state_dict().items() if ".adapters." not in k}, strict=False)
    assert other.load_adapter(str(tmp_path / "a"), set_active=True) == "a"
    torch.testing.assert_close(_logits(other, inputs), expected, rtol=0, atol=0)

    static.set_active_adapters(None)
    static.save_pretrained(str(tmp_path / "model"))
    flex = AutoAdapterModel.from_pretrained(str(tmp_path / "model")).eval()
    if "a" in flex.adapters_config.adapters:  # save_pretrained restores adapters (issue 23): load under a new name
        flex.delete_adapter("a")
    assert flex.load_adapter(str(tmp_path / "a"), set_active=True) == "a"
    assert "a" in flex.heads and flex.active_head == "a"  # the static head became flexible head "a", as in AdapterHub
    torch.testing.assert_close(_logits(flex, inputs), expected, rtol=1e-5, atol=1e-5)


def test_adapterhub_written_static_heads_load_and_reproduce_its_outputs():
    """Files AdapterHub 1.3.0 wrote (utils/make_adapterhub_head_fixtures.py): its static head
    beside an adapter loads into transformers' class and, converted, into an AdapterModel."""
    with open(os.path.join(HEAD_FIXTURES, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    inputs = {"input_ids": torch.tensor(expected["input_ids"]), "attention_mask": torch.tensor(expected["attention_mask"])}
    base = os.path.join(HEAD_FIXTURES, "base")
    static = transformers.BertForSequenceClassification.from_pretrained(base).eval()
    adapters.init(static)
    torch.nn.init.normal_(static.classifier.weight)  # the head must come from the adapter's folder
    static.config.id2label = {0: "a", 1: "b", 2: "c"}
    static.load_adapter(os.path.join(HEAD_FIXTURES, "adapter_with_head"), set_active=True)
    torch.testing.assert_close(_logits(static, inputs), torch.tensor(expected["static_logits"]), rtol=0, atol=1e-4)
    assert static.get_labels() == ["neg", "neu", "pos"]
    lone = adapters.init(transformers.BertForSequenceClassification.from_pretrained(base).eval())
    torch.nn.init.zeros_(lone.classifier.weight)
    lone.load_head(os.path.join(HEAD_FIXTURES, "static_head"))  # AdapterHub's .bin
    assert torch.equal(lone.classifier.weight, static.classifier.weight)

    flex = AutoAdapterModel.from_pretrained(base).eval()
    flex.load_adapter(os.path.join(HEAD_FIXTURES, "adapter_with_head"), set_active=True)
    assert list(flex.heads) == expected["flex_head_names"]
    assert flex.heads["a"].config == expected["flex_head_config"]
    torch.testing.assert_close(_logits(flex, inputs), torch.tensor(expected["flex_logits"]), rtol=0, atol=1e-4)


# -- average_head, get_prediction_heads_config, PredictionHead.build ----------------------------------------
def test_average_head_is_the_weighted_mean_of_the_heads_weights():
    model = AutoAdapterModel.from_config(CONFIGS["bert"]())
    for index, name in enumerate(("x", "y", "z")):
        model.add_classification_head(name, num_labels=3)
        perturb(model.heads[name], seed=index)
    model.add_tagging_head("t", num_labels=3)
    model.add_classification_head("one_layer", num_labels=3, layers=1)
    state = {name: model.heads[name].state_dict() for name in ("x", "y")}

    model.average_head("avg", ["x", "y"], weights=[1.0, 3.0])
    for key, value in model.heads["avg"].state_dict().items():
        torch.testing.assert_close(value, 0.25 * state["x"][key] + 0.75 * state["y"][key])
    assert model.active_head == "one_layer"  # set_active=False (AdapterHub's default)
    model.average_head("raw", {"x": 1.0, "y": 3.0}, normalize_weights=False, set_active=True)
    for key, value in model.heads["raw"].state_dict().items():
        torch.testing.assert_close(value, state["x"][key] + 3.0 * state["y"][key])
    assert model.active_head == "raw"
    model.average_head("mean", ["x", "y", "z"])
    key = "4.weight"
    torch.testing.assert_close(
        model.heads["mean"].state_dict()[key], sum(model.heads[n].state_dict()[key] for n in ("x", "y", "z")) / 3
    )
    inputs = make_inputs("bert")
    model.eval()
    with torch.no_grad():  # the averaged head is a head like the others
        assert model(**inputs, head="mean").logits.shape == (2, 3)
    configs = model.get_prediction_heads_config()
    assert set(configs) == {"x", "y", "z", "t", "one_layer", "avg", "raw", "mean"} and configs["avg"] == model.heads["x"].config
    configs["avg"]["num_labels"] = 99  # a copy
    assert model.heads["avg"].config["num_labels"] == 3

    heads_before = list(model.heads)
    for args, message in [
        (("bad", ["x", "t"]), "different classes"),
        (("bad", ["x", "one_layer"]), "differ in layers"),
        (("bad", ["x", "nope"]), "no head named 'nope'"),
        (("bad", []), "empty"),
        (("avg", ["x", "y"]), "exists already"),
        (("bad", ["x", "y"], [1.0]), "2 numbers"),
        (("bad", ["x", "y"], [1.0, -1.0]), "sum to 0"),
        (("bad", {"x": 1.0}, [1.0]), "not both"),
        (("../bad", ["x", "y"]), "head_name"),
    ]:
        with pytest.raises(AdapterConfigError, match=message):
            model.average_head(*args)
    assert list(model.heads) == heads_before
    model.average_head("avg", ["y", "z"], overwrite_ok=True)
    torch.testing.assert_close(model.heads["avg"].state_dict()[key], (state["y"][key] + model.heads["z"].state_dict()[key]) / 2)


def test_prediction_head_build_makes_adapterhubs_layers_for_custom_heads():
    from adapters.heads import PredictionHead

    class MyHead(PredictionHead):
        def __init__(self, model, head_name, num_labels=2, layers=2, activation_function="tanh", **kwargs):
            super().__init__(head_name)
            self.config = {"head_type": "my_head", "num_labels": num_labels, "layers": layers,
                           "activation_function": activation_function}
            self.build(model)

        def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
            logits = super().forward(outputs[0][:, 0])
            return transformers.modeling_outputs.SequenceClassifierOutput(logits=logits)

    model = AutoAdapterModel.from_config(CONFIGS["bert"]())
    model.register_custom_head("my_head", MyHead)
    model.add_custom_head("my_head", "mine", num_labels=5, layers=2)
    head = model.heads["mine"]
    hidden = model.config.hidden_size
    assert [type(m).__name__ for m in head] == ["Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert head[1].weight.shape == (hidden, hidden) and head[4].weight.shape == (5, hidden)
    assert 0 < head[4].weight.std() < 0.1 and torch.all(head[4].bias == 0)  # BERT's initialisation (std 0.02)
    model.eval()
    with torch.no_grad():
        out = model(**make_inputs("bert"))
        states = model.bert(**make_inputs("bert")).last_hidden_state[:, 0]
    torch.testing.assert_close(out.logits, head[4](torch.tanh(head[1](states))))

    class NoLayers(PredictionHead):
        def __init__(self, model, head_name):
            super().__init__(head_name)
            self.config = {"head_type": "no_layers", "num_labels": 2}
            self.build(model)

    with pytest.raises(AdapterConfigError, match="no layers, activation_function"):
        NoLayers(model, "bad")


def test_head_classes_are_exported_at_the_top_level_with_adapterhubs_signatures():
    from adapters import heads

    for name in ("ClassificationHead", "MultiLabelClassificationHead", "TaggingHead", "MultipleChoiceHead",
                 "QuestionAnsweringHead", "CausalLMHead", "Seq2SeqLMHead", "BertStyleMaskedLMHead", "ImageClassificationHead"):
        assert getattr(adapters, name) is getattr(heads, name) and name in adapters.__all__
    model = AutoAdapterModel.from_config(CONFIGS["bert"]())
    # AdapterHub's positional order: model, head_name, num_labels, layers, activation_function, id2label, dropout_prob
    qa = adapters.QuestionAnsweringHead(model, "qa", 2, 2, "relu", None, 0.1)
    assert (qa.config["layers"], qa.config["activation_function"], qa.config["dropout_prob"]) == (2, "relu", 0.1)
    model.add_prediction_head(qa)
    model.eval()
    with torch.no_grad():
        out = model(**make_inputs("bert"))
    assert out.start_logits.shape == out.end_logits.shape == (2, 12)


def test_the_active_heads_labels_reach_pipelines(tmp_path):
    from transformers import BertTokenizer, pipeline

    words = [f"w{i}" for i in range(CONFIGS["bert"]().vocab_size - 5)]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(vocab=str(tmp_path / "vocab.txt"))
    model = AutoAdapterModel.from_config(CONFIGS["bert"]()).eval()
    model.add_classification_head("sentiment", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    model.add_classification_head("topics", num_labels=2, id2label={0: "sport", 1: "art"}, multilabel=True)
    model.add_tagging_head("ner", num_labels=2, id2label={0: "O", 1: "PER"})
    text = "w1 w2 w3"

    def labels(task, **kwargs):
        found = pipeline(task, model=model, tokenizer=tokenizer, **kwargs)([text])[0]
        return sorted({entry["label" if task == "text-classification" else "entity"] for entry in found})

    model.active_head = "sentiment"
    assert labels("text-classification", top_k=None) == ["neg", "neu", "pos"]
    model.active_head = "topics"
    assert labels("text-classification", top_k=None) == ["art", "sport"]
    model.active_head = "ner"
    found = labels("token-classification", ignore_labels=[])
    assert found and set(found) <= {"O", "PER"}
    assert model.get_labels("sentiment") == ["neg", "neu", "pos"]
    # image heads (the image pipeline needs PIL, not installed here): the labels reach the config it reads
    vit = AutoAdapterModel.from_config(CONFIGS["vit"]())
    vit.add_image_classification_head("pets", num_labels=2, id2label={0: "cat", 1: "dog"})
    assert vit.config.id2label == {0: "cat", 1: "dog"} and vit.config.label2id == {"cat": 0, "dog": 1}


# -- marker classes and invertible adapters ---------------------------------------------------------------
def test_marker_classes_answer_isinstance_as_adapterhubs():
    head_model, base = patched("bert", "mlm"), patched("bert")
    flex = AutoAdapterModel.from_config(CONFIGS["bert"]())
    assert isinstance(head_model, adapters.ModelWithHeadsAdaptersMixin) and isinstance(flex, adapters.ModelWithHeadsAdaptersMixin)
    assert isinstance(flex, adapters.ModelWithFlexibleHeadsAdaptersMixin)
    assert not isinstance(head_model, adapters.ModelWithFlexibleHeadsAdaptersMixin)
    assert not isinstance(base, adapters.ModelWithHeadsAdaptersMixin)
    assert isinstance(base, adapters.InvertibleAdaptersMixin) and not isinstance(base, adapters.InvertibleAdaptersWrapperMixin)
    assert isinstance(head_model, adapters.InvertibleAdaptersMixin) and isinstance(head_model, adapters.InvertibleAdaptersWrapperMixin)
    assert isinstance(flex, adapters.InvertibleAdaptersWrapperMixin)
    assert not isinstance(make_model("bert"), adapters.InvertibleAdaptersMixin)  # not patched
    assert not isinstance(object(), adapters.InvertibleAdaptersMixin)


def test_invertible_adapter_methods_behave_as_adapterhubs():
    model = patched("bert", "mlm")
    model.add_adapter("de", config="seq_bn_inv")
    model.add_adapter("task", config="seq_bn")
    perturb(model.base_model.invertible_adapters, seed=4)
    assert model.get_invertible_adapter() is None  # no active setup
    model.set_active_adapters(Stack("de", "task"))
    block = model.get_invertible_adapter()
    assert block is model.base_model.invertible_adapters["de"]
    model.set_active_adapters(Stack("task", "de"))
    assert model.get_invertible_adapter() is None  # the first adapter of the setup has none
    model.set_active_adapters(Stack("de", "task"))
    inputs = make_inputs("bert")
    with_block = _logits(model, inputs)
    saved = {k: v.clone() for k, v in block.state_dict().items()}

    assert model.add_invertible_adapter("task") is False  # its config asks for none
    with pytest.raises(AdapterConfigError, match="has its invertible block already"):
        model.add_invertible_adapter("de")
    with pytest.raises(AdapterConfigError, match="no adapter named 'nope'"):
        model.add_invertible_adapter("nope")
    model.delete_invertible_adapter("de")
    assert model.get_invertible_adapter() is None and "de" in model.adapters_config.adapters
    without = _logits(model, inputs)
    assert not torch.allclose(without, with_block)
    # the definition: without the block the embeddings pass unchanged, as through a NICE block
    # whose coupling networks output zero
    assert model.add_invertible_adapter("de") is True
    with torch.no_grad():
        for param in model.get_invertible_adapter().parameters():
            param.zero_()
    torch.testing.assert_close(_logits(model, inputs), without, rtol=1e-6, atol=1e-6)
    model.get_invertible_adapter().load_state_dict(saved)
    torch.testing.assert_close(_logits(model, inputs), with_block, rtol=0, atol=0)

    model.train_adapter("task")
    assert not any(p.requires_grad for p in model.base_model.invertible_adapters["de"].parameters())
    model.enable_invertible_adapters(["de", "task"])
    assert all(p.requires_grad for p in model.base_model.invertible_adapters["de"].parameters())
    model.delete_adapter("de")
    assert "invertible_adapters" not in model.base_model._modules


def test_lora_layer_and_the_adapter_config_module_are_adapterhubs_names():
    from adapters.configuration import adapter_config
    from adapters.methods.lora import LinearHost, LoRALayer

    assert LoRALayer is LinearHost
    model = patched("bert")
    model.add_adapter("l", config="lora")
    layers = [name for name, module in model.named_modules() if isinstance(module, LoRALayer)]
    assert len(layers) == 2 * model.config.num_hidden_layers  # query and value of every layer (AdapterHub's default)
    assert all("l" in model.get_submodule(name).loras for name in layers)
    for name in adapter_config.__all__:
        assert getattr(adapter_config, name) is getattr(adapters, name)


def test_lora_delta_w_svd_flag_support_and_loaded_embeddings():
    """``support_lora_delta_w_svd`` is true on every model here: the SVD merge also works on GPT-2's
    fused ``c_attn``, where AdapterHub's flag is False and it refuses."""
    model = patched("gpt2")
    assert model.support_lora_delta_w_svd and model.base_model.support_lora_delta_w_svd
    model.add_adapter("a", config=adapters.LoRAConfig(r=2))
    model.add_adapter("b", config=adapters.LoRAConfig(r=2))
    perturb(model, seed=1)
    model.average_adapter("svd", ["a", "b"], weights=[1.0, 1.0], normalize_weights=False,
                          combine_strategy="lora_delta_w_svd", svd_rank=4)
    # rank 4 holds both rank-2 deltas exactly: the SVD adapter's delta is ΔW_a + ΔW_b, which is
    # what Stack("a", "b") applies (LoRA deltas add)
    inputs = make_inputs("gpt2")
    with torch.no_grad():
        model.set_active_adapters("svd")
        merged = model(**inputs).last_hidden_state
        model.set_active_adapters(Stack("a", "b"))
        summed = model(**inputs).last_hidden_state
        model.set_active_adapters(None)
        plain = model(**inputs).last_hidden_state
    torch.testing.assert_close(merged, summed, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)

    bert = patched("bert")
    embeddings = bert.loaded_embeddings
    assert list(embeddings) == ["default"] and embeddings["default"] is bert.get_input_embeddings()
    embeddings["other"] = None  # a copy: the model's embeddings are changed through its methods only
    assert list(bert.loaded_embeddings) == ["default"]


def _head_folder_with_both_formats(tmp_path, safe_model, legacy_model, head_name=None):
    """A head folder holding ``model_head.safetensors`` from ``safe_model`` and
    ``pytorch_model_head.bin`` from ``legacy_model`` (the same head, different weights)."""
    import shutil

    args = (head_name,) if head_name else ()
    safe_model.save_head(str(tmp_path / "safe"), *args)
    legacy_model.save_head(str(tmp_path / "legacy"), *args, use_safetensors=False)
    shutil.copy(tmp_path / "legacy" / "pytorch_model_head.bin", tmp_path / "safe" / "pytorch_model_head.bin")
    return str(tmp_path / "safe")


def test_load_head_use_safetensors_picks_the_file_where_a_folder_holds_both_formats(tmp_path):
    """``use_safetensors`` is honoured as AdapterHub honours it (False, the default: the .bin;
    True: the safetensors file) on a static head model, in the static -> flexible conversion and
    for a flexible head; with one file, that file is read whatever the flag says."""
    first, second = _static(seed=0), _static(seed=1)
    assert not torch.equal(first.classifier.weight, second.classifier.weight)
    folder = _head_folder_with_both_formats(tmp_path / "static", first, second)
    for use_safetensors, source in ((True, first), (False, second), (None, second)):
        target = patched("bert", "seq_cls", seed=5)
        kwargs = {} if use_safetensors is None else {"use_safetensors": use_safetensors}
        target.load_head(folder, **kwargs)
        assert torch.equal(target.classifier.weight, source.classifier.weight), use_safetensors
    # the static head converted into an AdapterModel's flexible head
    first.save_pretrained(str(tmp_path / "model"))
    flex = AutoAdapterModel.from_pretrained(str(tmp_path / "model")).eval()
    inputs = make_inputs("bert")
    flex.load_head(folder, load_as="safe", use_safetensors=True, set_active=True)
    torch.testing.assert_close(_logits(flex, inputs), _logits(first, inputs), rtol=1e-5, atol=1e-5)
    flex.load_head(folder, load_as="legacy", use_safetensors=False, set_active=True)
    assert not torch.allclose(_logits(flex, inputs), _logits(first, inputs))
    # a flexible head saved by an AdapterModel
    flex_first = AutoAdapterModel.from_pretrained(str(tmp_path / "model")).eval()
    flex_second = AutoAdapterModel.from_pretrained(str(tmp_path / "model")).eval()
    perturb(flex_second.heads["default"], seed=3)
    flex_folder = _head_folder_with_both_formats(tmp_path / "flex", flex_first, flex_second, "default")
    for use_safetensors, source in ((True, flex_first), (False, flex_second)):
        target = AutoAdapterModel.from_pretrained(str(tmp_path / "model")).eval()
        target.delete_head("default")
        assert target.load_head(flex_folder, use_safetensors=use_safetensors) == "default"
        expected = source.heads["default"].state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in target.heads["default"].state_dict().items())
    # one file: read whatever the flag says
    only_safe = patched("bert", "seq_cls", seed=5)
    only_safe.load_head(str(tmp_path / "static" / "legacy"), use_safetensors=True)
    assert torch.equal(only_safe.classifier.weight, second.classifier.weight)


def test_head_file_names_and_the_head_folder_check_are_defined_once():
    """The AdapterHub head file names and ``_holds_head`` live in adapters.static_heads; the
    flexible heads' checkpoint code uses the same objects (no second definition to drift)."""
    import inspect

    from adapters import static_heads
    from adapters.heads import checkpoints, model_mixin

    source = inspect.getsource(checkpoints)
    for constant in ("HEAD_CONFIG_NAME", "HEAD_WEIGHTS_NAME", "HEAD_SAFE_WEIGHTS_NAME"):
        assert f"\n{constant} = " not in source
        assert getattr(checkpoints, constant) == getattr(static_heads, constant) == getattr(model_mixin, constant)
    assert "_holds_head" not in checkpoints.HeadCheckpointMixin.__dict__
    assert model_mixin.FlexibleHeadsMixin._holds_head is static_heads.ModelWithHeadsAdaptersMixin._holds_head
