"""QLoRA: train a LoRA adapter on a 4-bit quantized causal language model, merge it, generate.

Runs on CPU in well under a minute:

1. build a small Llama (no pretrained causal LM installs offline) with a word vocabulary taken
   from a tiny text set, and save it to a temporary folder;
2. load it in 4-bit NF4 with ``BitsAndBytesConfig`` (bitsandbytes), the way a real QLoRA run loads
   a large model;
   then LoftQ on that 4-bit base: an adapter initialised from the checkpoint's float weights to
   what the 4-bit rounding lost (shown on the logits, then deleted);
3. add a LoRA adapter to every quantized linear layer and train it for a few steps with
   ``AdapterTrainer`` (only the adapter trains; the 4-bit weights stay frozen);
4. generate with the adapter;
5. merge the adapter into the 4-bit weights (they are dequantized, updated and re-quantized, and
   the re-quantization's effect on the update is reported) and generate again; then the exact
   alternative: merge the saved adapter into the float model.

Usage::

    python examples/qlora.py
"""

import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never download

import torch
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, TrainingArguments
from transformers.utils import logging as hf_logging

import adapters
from adapters import AdapterTrainer, LoRAConfig

SEED = 0
STEPS, BATCH_SIZE, LR = 60, 8, 1e-2
TEXT = [
    "the cat sat on the mat and looked at the moon",
    "the dog ran to the park and played with the ball",
    "a bird sang in the tree at the break of day",
    "the fish swam in the lake under the old bridge",
    "my friend read a book by the warm fire at night",
    "the child drew a house with a red door and a tree",
]
# every linear layer bitsandbytes quantizes (all but lm_head)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class WordTokenizer:
    """Whitespace words; 0 pads, 1 starts a sentence, 2 ends one."""

    def __init__(self, texts):
        self.vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
        for text in texts:
            for word in text.split():
                self.vocab.setdefault(word, len(self.vocab))
        self.words = {i: w for w, i in self.vocab.items()}

    def encode(self, text):
        return [1] + [self.vocab[w] for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids if i > 2)


def build_base(folder, tokenizer):
    """A small random Llama saved to ``folder`` (hidden size 64: bitsandbytes' 4-bit blocks are 64 weights)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer.vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    LlamaForCausalLM(config).save_pretrained(folder)


def dataset(tokenizer):
    rows = []
    for text in TEXT:
        ids = tokenizer.encode(text) + [2]
        rows.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * len(ids)})
    return rows


def collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    def pad(key, value):
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])
    return {"input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0), "labels": pad("labels", -100)}


@torch.no_grad()
def mean_loss(model, rows):
    model.eval()
    return model(**collate(rows)).loss.item()


@torch.no_grad()
def complete(model, tokenizer, prompt, words=8):
    model.eval()
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=words, do_sample=False,
                         pad_token_id=0, eos_token_id=2)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


def main():
    start = time.time()
    torch.set_num_threads(1)  # a model this small gains nothing from more threads, and loses to their syncs
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = WordTokenizer(TEXT)
    rows = dataset(tokenizer)
    work = tempfile.mkdtemp(prefix="qlora_")
    base_folder = os.path.join(work, "base")
    build_base(base_folder, tokenizer)

    # 1. the base in 4-bit NF4 (compute in float32 on CPU; bfloat16 is the usual choice on a GPU)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32
    )
    model = LlamaForCausalLM.from_pretrained(base_folder, quantization_config=quantization)
    adapters.init(model)
    layer = model.model.layers[0].self_attn.q_proj
    print(f"base: {type(layer).__name__}, weight stored as {tuple(layer.weight.shape)} {layer.weight.dtype} "
          f"for a {layer.out_features}x{layer.in_features} layer")

    # LoftQ on the quantized base: an adapter initialised to what the 4-bit rounding lost, fitted to the
    # float weights in the checkpoint the model was loaded from (the 4-bit weights stay as they are)
    float_model = LlamaForCausalLM.from_pretrained(base_folder)
    model.add_adapter("loftq", LoRAConfig(r=8, alpha=16, init_weights="loftq", target_modules=TARGETS))
    with torch.no_grad():
        batch = collate(rows)
        float_logits = float_model(**batch).logits
        plain_error = (model(**batch).logits - float_logits).abs().mean().item()
        with adapters.AdapterSetup("loftq"):
            loftq_error = (model(**batch).logits - float_logits).abs().mean().item()
    print(f"LoftQ on the 4-bit base: mean |logits - float logits| {plain_error:.4f} -> {loftq_error:.4f}")
    model.delete_adapter("loftq")

    # 2. a LoRA adapter on every quantized linear layer; only it trains
    model.add_adapter("qlora", LoRAConfig(r=8, alpha=16, dropout=0.0, target_modules=TARGETS))
    model.train_adapter("qlora")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapted = sum(1 for m in model.modules() if hasattr(m, "loras"))
    print(f"trainable parameters: {trainable} (the adapter) on {adapted} frozen 4-bit layers")
    before = mean_loss(model, rows)

    args = TrainingArguments(
        output_dir=os.path.join(work, "run"), max_steps=STEPS, per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LR, lr_scheduler_type="constant", logging_steps=STEPS, save_strategy="no", report_to=[],
        use_cpu=True, seed=SEED, disable_tqdm=True,
    )
    trainer = AdapterTrainer(model=model, args=args, train_dataset=rows * 8, data_collator=collate)
    trainer.train()
    after = mean_loss(model, rows)
    print(f"training loss {before:.3f} -> {after:.3f} ({STEPS} steps)")

    prompt = "the dog ran"
    unmerged_text = complete(model, tokenizer, prompt)
    print(f"generation (adapter):   {prompt} | {unmerged_text}")
    model.save_adapter(os.path.join(work, "qlora_adapter"), "qlora")

    # 3. merge into the 4-bit weights: dequantize, add ΔW, re-quantize (reported)
    with torch.no_grad():
        batch = collate(rows)
        unmerged_logits = model(**batch).logits
    model.merge_adapter("qlora")
    report = layer.merge_report("qlora")
    print(f"merged into 4-bit q_proj of layer 0: {report.describe()}")
    with torch.no_grad():
        merged_logits = model(**batch).logits
    print(f"max |logits merged - unmerged| = {(merged_logits - unmerged_logits).abs().max().item():.4f} "
          f"(logits up to {unmerged_logits.abs().max().item():.2f})")
    merged_text = complete(model, tokenizer, prompt)
    print(f"generation (merged 4-bit): {prompt} | {merged_text}")

    # 4. the exact alternative: merge the adapter into the float model
    adapters.init(float_model)
    float_model.load_adapter(os.path.join(work, "qlora_adapter"), set_active=True)
    float_merged = float_model.merge_and_unload()
    print(f"generation (merged float): {prompt} | {complete(float_merged, tokenizer, prompt)}")
    print(f"done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
