"""Llama family (Llama, Mistral, Qwen2, Qwen3): pre-LN decoder layers computing
``x + self_attn(input_layernorm(x))`` and then ``x + mlp(post_attention_layernorm(x))``;
adapters live in new ``attention_adapters`` / ``output_adapters`` children of each layer
(AdapterHub's keys).

Qwen3 differs only inside attention (RMS norms ``q_norm`` / ``k_norm`` on each head of the
projected queries and keys, before rotary embeddings); prefix-tuning keys are prepended after
that, as learned, already normalised keys, like PEFT's past-key-value prefixes.

Where the FFN's LoRA goes follows AdapterHub, whose checkpoints name the layers: its own Llama and
Mistral modules put ``intermediate_lora`` on ``mlp.down_proj`` and ``output_lora`` on ``mlp.up_proj``,
while its plug-in interface, through which it runs Qwen 2 and Qwen 3 (and Gemma 2 / 3), puts them on
``mlp.up_proj`` and ``mlp.down_proj``, the projections their names describe
(:func:`llama_spec_for_model`)."""

from __future__ import annotations

import dataclasses

from ..hooks.spec import ArchitectureSpec, ResidualHook, StackSpec, register_architecture

__all__ = ["LLAMA", "llama_spec_for_model", "with_interface_ffn_lora"]

# the model types AdapterHub 1.3.0 runs through its plug-in interface (adapters/wrappers/interfaces.py)
INTERFACE_MODEL_TYPES = ("qwen2", "qwen3")


def with_interface_ffn_lora(spec: ArchitectureSpec) -> ArchitectureSpec:
    """``spec`` with AdapterHub's plug-in interface placement of the FFN's LoRA: ``intermediate_lora``
    on ``mlp.up_proj`` (the projection into the intermediate width), ``output_lora`` on
    ``mlp.down_proj`` (the projection back to the hidden width).

    Example::

        >>> with_interface_ffn_lora(LLAMA).stacks[0].intermediate_lora
        ('mlp.up_proj',)
    """
    stacks = tuple(
        dataclasses.replace(stack, intermediate_lora=("mlp.up_proj",), output_lora=("mlp.down_proj",))
        for stack in spec.stacks
    )
    return dataclasses.replace(spec, stacks=stacks, for_model=None)


def llama_spec_for_model(model) -> ArchitectureSpec:
    """The spec of a Llama-family model: :data:`LLAMA` as AdapterHub's Llama and Mistral modules
    place the FFN's LoRA, and with :func:`with_interface_ffn_lora` for Qwen 2 / Qwen 3 (AdapterHub's
    plug-in interface models), so that AdapterHub's ``intermediate_lora`` / IA³ checkpoints of each
    load onto the layer they were trained on (a checkpoint of the other placement names layers this
    spec does not adapt, and ``load_adapter`` refuses it, naming the missing weights).

    Example::

        >>> llama_spec_for_model(qwen2_model).stacks[0].intermediate_lora
        ('mlp.up_proj',)
        >>> llama_spec_for_model(llama_model).stacks[0].intermediate_lora
        ('mlp.down_proj',)
    """
    if model.config.model_type in INTERFACE_MODEL_TYPES:
        return with_interface_ffn_lora(LLAMA)
    return dataclasses.replace(LLAMA, for_model=None)


LLAMA = register_architecture(
    ArchitectureSpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        stacks=(
            StackSpec(
                layers="layers",
                residual_hooks=(
                    ResidualHook(
                        "mh_adapter",
                        host="attention_adapters",
                        create_host=True,
                        residual_source="input_layernorm",
                        sublayer="self_attn",
                    ),
                    ResidualHook(
                        "output_adapter",
                        host="output_adapters",
                        create_host=True,
                        residual_source="post_attention_layernorm",
                        sublayer="mlp",
                    ),
                ),
                attention="self_attn",
                query="self_attn.q_proj",
                key="self_attn.k_proj",
                value="self_attn.v_proj",
                attn_output="self_attn.o_proj",
                ffn_in=("mlp.gate_proj", "mlp.up_proj"),
                ffn_out="mlp.down_proj",
                intermediate_lora=("mlp.down_proj",),
                output_lora=("mlp.up_proj",),
            ),
        ),
        embeddings="embed_tokens",
        pre_ln=True,
        for_model=llama_spec_for_model,
    )
)
