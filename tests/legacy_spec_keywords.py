"""Every built-in architecture spec as commit 0018674 wrote it, in the keywords :class:`~adapters.ArchitectureSpec`
took before it had ``stacks`` (the first stack's fields, the second stack as ``second_stack``), and the
role, prefix location and sub-config of each stack as its ``stacks()`` derived them.

Generated from that commit's specs (only keywords that differ from their defaults); tests/test_spec_shape.py
builds each through the compatibility path and compares it with the spec registered today. A deliberate
change of a spec's values is recorded here too: BERT's and DeBERTa's hooks name ``sublayer_output`` since
issue 21 (the adapters take ``h`` where the model has it apart from ``x``)."""

from adapters import ResidualHook
from adapters.hooks.spec import StackSpec
from adapters.models.albert import albert_spec_for_groups
from adapters.models.clip import clip_parallel_similarities
from adapters.models.gemma import gemma_spec_for_model
from adapters.models.llama import llama_spec_for_model

LEGACY_KEYWORDS = {
    "albert": dict(
        name="albert",
        model_types=("albert",),
        layers="encoder.albert_layer_groups.0.albert_layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention.attention_adapters", residual_source="attention", create_host=True,
                norm="attention.LayerNorm",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="ffn", residual_kwarg="input",
                create_host=True, norm="full_layer_layer_norm",
            ),
        ),
        attention="attention",
        query="attention.query",
        key="attention.key",
        value="attention.value",
        attn_output="attention.dense",
        ffn_in=("ffn",),
        ffn_out="ffn_output",
        embeddings="embeddings",
        pre_ln=False,
        intermediate_lora=("ffn",),
        output_lora=("ffn_output",),
        # since issue 23: several layer groups are one stack per group (no longer refused)
        for_model=albert_spec_for_groups,
    ),
    "bart": dict(
        name="bart",
        model_types=("bart",),
        layers="encoder.layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="self_attn", create_host=True,
                norm="self_attn_layer_norm",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="fc1", residual_kwarg="input",
                create_host=True, norm="final_layer_norm",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.out_proj",
        ffn_in=("fc1",),
        ffn_out="fc2",
        embeddings="shared",
        pre_ln=False,
        intermediate_lora=("fc1",),
        output_lora=("fc2",),
        embedding_output="encoder.layernorm_embedding",
        second_stack=StackSpec(
            layers="decoder.layers",
            residual_hooks=(
                ResidualHook(
                    "mh_adapter", host="attention_adapters", residual_source="self_attn", create_host=True,
                    norm="self_attn_layer_norm",
                ),
                ResidualHook(
                    "cross_adapter", host="cross_attention_adapters", residual_source="encoder_attn", create_host=True,
                    norm="encoder_attn_layer_norm",
                ),
                ResidualHook(
                    "output_adapter", host="output_adapters", residual_source="fc1", residual_kwarg="input",
                    create_host=True, norm="final_layer_norm",
                ),
            ),
            attention="self_attn",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            attn_output="self_attn.out_proj",
            ffn_in=("fc1",),
            ffn_out="fc2",
            intermediate_lora=("fc1",),
            output_lora=("fc2",),
            cross_attention="encoder_attn",
            cross_query="encoder_attn.q_proj",
            cross_key="encoder_attn.k_proj",
            cross_value="encoder_attn.v_proj",
            cross_attn_output="encoder_attn.out_proj",
            position_embeddings="decoder.embed_positions",
        ),
        encoder="encoder",
        decoder_module="decoder",
    ),
    "bert": dict(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        layers="encoder.layer",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention.output", residual_source="attention.output", residual_arg=1,
                residual_kwarg="input_tensor", norm="attention.output.LayerNorm",
                sublayer_output="attention.output.dropout",
            ),
            ResidualHook(
                "output_adapter", host="output", residual_source="output", residual_arg=1,
                residual_kwarg="input_tensor", norm="output.LayerNorm", sublayer_output="output.dropout",
            ),
        ),
        attention="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        attn_output="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        embeddings="embeddings",
        pre_ln=False,
        intermediate_lora=("intermediate.dense",),
        output_lora=("output.dense",),
    ),
    "clip": dict(
        name="clip",
        model_types=("clip",),
        layers="text_model.encoder.layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="layer_norm1", create_host=True,
                sublayer="self_attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="layer_norm2", create_host=True,
                sublayer="mlp",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.out_proj",
        ffn_in=("mlp.fc1",),
        ffn_out="mlp.fc2",
        embeddings="text_model.embeddings.token_embedding",
        pre_ln=True,
        intermediate_lora=("mlp.fc1",),
        output_lora=("mlp.fc2",),
        embedding_output="text_model.embeddings",
        refused_methods=(
            (
                "prompt_tuning",
                "the text tower pools at the end-of-text token found in input_ids, which a soft prompt would shift, "
                "and a prompt for the image tower alone is not offered (as in AdapterHub)",
            ),
            (
                "adaption_prompt",
                "Llama-Adapter is defined for decoder-only language models; CLIP's towers are encoders",
            ),
        ),
        second_stack=StackSpec(
            layers="vision_model.encoder.layers",
            residual_hooks=(
                ResidualHook(
                    "mh_adapter", host="attention_adapters", residual_source="layer_norm1", create_host=True,
                    sublayer="self_attn",
                ),
                ResidualHook(
                    "output_adapter", host="output_adapters", residual_source="layer_norm2", create_host=True,
                    sublayer="mlp",
                ),
            ),
            attention="self_attn",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            attn_output="self_attn.out_proj",
            ffn_in=("mlp.fc1",),
            ffn_out="mlp.fc2",
            intermediate_lora=("mlp.fc1",),
            output_lora=("mlp.fc2",),
            role="vision",
            sub_config="vision_config",
            attention_location="clip_vision_model_self",
        ),
        first_role="text",
        sub_config="text_config",
        attention_location="clip_text_model_self",
        entry_modules=("text_model", "vision_model"),
        parallel_output=clip_parallel_similarities,
    ),
    "clip_text_model": dict(
        name="clip_text_model",
        model_types=("clip_text_model",),
        layers="encoder.layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="layer_norm1", create_host=True,
                sublayer="self_attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="layer_norm2", create_host=True,
                sublayer="mlp",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.out_proj",
        ffn_in=("mlp.fc1",),
        ffn_out="mlp.fc2",
        embeddings="embeddings.token_embedding",
        pre_ln=True,
        intermediate_lora=("mlp.fc1",),
        output_lora=("mlp.fc2",),
        embedding_output="embeddings",
        refused_methods=(
            (
                "prompt_tuning",
                "the pooled output is taken at the end-of-text token found in input_ids, and a soft prompt would "
                "shift it to another position",
            ),
        ),
    ),
    "clip_vision_model": dict(
        name="clip_vision_model",
        model_types=("clip_vision_model",),
        layers="encoder.layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="layer_norm1", create_host=True,
                sublayer="self_attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="layer_norm2", create_host=True,
                sublayer="mlp",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.out_proj",
        ffn_in=("mlp.fc1",),
        ffn_out="mlp.fc2",
        embeddings="embeddings",
        pre_ln=True,
        intermediate_lora=("mlp.fc1",),
        output_lora=("mlp.fc2",),
        embedding_output="pre_layrnorm",
    ),
    "deberta-v2": dict(
        name="deberta-v2",
        model_types=("deberta-v2",),
        layers="encoder.layer",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention.output", residual_source="attention.output", residual_arg=1,
                residual_kwarg="input_tensor", norm="attention.output.LayerNorm",
                sublayer_output="attention.output.dropout",
            ),
            ResidualHook(
                "output_adapter", host="output", residual_source="output", residual_arg=1,
                residual_kwarg="input_tensor", norm="output.LayerNorm", sublayer_output="output.dropout",
            ),
        ),
        attention="attention.self",
        query="attention.self.query_proj",
        key="attention.self.key_proj",
        value="attention.self.value_proj",
        attn_output="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        embeddings="embeddings.word_embeddings",
        pre_ln=False,
        intermediate_lora=("intermediate.dense",),
        output_lora=("output.dense",),
        embedding_output="embeddings",
        attention_interface=False,
    ),
    "distilbert": dict(
        name="distilbert",
        model_types=("distilbert",),
        layers="transformer.layer",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="attention", create_host=True,
                norm="sa_layer_norm",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="ffn", residual_kwarg="input",
                create_host=True, norm="output_layer_norm",
            ),
        ),
        attention="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attn_output="attention.out_lin",
        ffn_in=("ffn.lin1",),
        ffn_out="ffn.lin2",
        embeddings="embeddings",
        pre_ln=False,
        intermediate_lora=("ffn.lin1",),
        output_lora=("ffn.lin2",),
    ),
    "gemma": dict(
        name="gemma",
        model_types=("gemma2", "gemma3_text"),
        layers="layers",
        residual_hooks=(
            # since issue 23: the adapters run on the sub-block output before the post-norm, which their
            # original_ln_before step reads (AdapterHub's plug-in interface placement)
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="input_layernorm", create_host=True,
                sublayer="self_attn", sublayer_norm="post_attention_layernorm",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="pre_feedforward_layernorm", create_host=True,
                sublayer="mlp", sublayer_norm="post_feedforward_layernorm",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.o_proj",
        ffn_in=("mlp.gate_proj", "mlp.up_proj"),
        ffn_out="mlp.down_proj",
        embeddings="embed_tokens",
        pre_ln=True,
        # since issue 23: AdapterHub's plug-in interface placement (which runs Gemma 2 / 3)
        intermediate_lora=("mlp.up_proj",),
        output_lora=("mlp.down_proj",),
        # since issue 23: Gemma 2's invertible adapters act before its embedding scale, as on transformers 4
        for_model=gemma_spec_for_model,
    ),
    "gpt2": dict(
        name="gpt2",
        model_types=("gpt2",),
        layers="h",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="ln_1", create_host=True, sublayer="attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="ln_2", create_host=True, sublayer="mlp",
            ),
        ),
        attention="attn",
        query="attn.c_attn",
        key="attn.c_attn",
        value="attn.c_attn",
        attn_output="attn.c_proj",
        ffn_in=("mlp.c_fc",),
        ffn_out="mlp.c_proj",
        embeddings="wte",
        pre_ln=True,
        intermediate_lora=("mlp.c_fc",),
        output_lora=("mlp.c_proj",),
        embedding_output="drop",
    ),
    "gpt_neox": dict(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="input_layernorm", create_host=True,
                sublayer="attention",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="post_attention_layernorm", create_host=True,
                sublayer="mlp",
            ),
        ),
        attention="attention",
        query="attention.query_key_value",
        key="attention.query_key_value",
        value="attention.query_key_value",
        attn_output="attention.dense",
        ffn_in=("mlp.dense_h_to_4h",),
        ffn_out="mlp.dense_4h_to_h",
        embeddings="embed_in",
        pre_ln=True,
        intermediate_lora=("mlp.dense_h_to_4h",),
        output_lora=("mlp.dense_4h_to_h",),
        embedding_output="emb_dropout",
        fused_qkv_layout="interleaved_heads",
    ),
    "gptj": dict(
        name="gptj",
        model_types=("gptj",),
        layers="h",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="ln_1", create_host=True, sublayer="attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="ln_1", create_host=True, sublayer="mlp",
            ),
        ),
        attention="attn",
        query="attn.q_proj",
        key="attn.k_proj",
        value="attn.v_proj",
        attn_output="attn.out_proj",
        ffn_in=("mlp.fc_in",),
        ffn_out="mlp.fc_out",
        embeddings="wte",
        pre_ln=True,
        intermediate_lora=("mlp.fc_in",),
        output_lora=("mlp.fc_out",),
        embedding_output="drop",
        attention_interface=False,
    ),
    "llama": dict(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers="layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="input_layernorm", create_host=True,
                sublayer="self_attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="post_attention_layernorm", create_host=True,
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
        embeddings="embed_tokens",
        pre_ln=True,
        intermediate_lora=("mlp.down_proj",),
        output_lora=("mlp.up_proj",),
        # since issue 23: Qwen 2 / 3 place the FFN's LoRA as AdapterHub's plug-in interface does
        for_model=llama_spec_for_model,
    ),
    "mbart": dict(
        name="mbart",
        model_types=("mbart",),
        layers="encoder.layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="self_attn_layer_norm", create_host=True,
                sublayer="self_attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="final_layer_norm", create_host=True,
                sublayer="fc2",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.out_proj",
        ffn_in=("fc1",),
        ffn_out="fc2",
        embeddings="shared",
        pre_ln=True,
        intermediate_lora=("fc1",),
        output_lora=("fc2",),
        embedding_output="encoder.layernorm_embedding",
        second_stack=StackSpec(
            layers="decoder.layers",
            residual_hooks=(
                ResidualHook(
                    "mh_adapter", host="attention_adapters", residual_source="self_attn_layer_norm", create_host=True,
                    sublayer="self_attn",
                ),
                ResidualHook(
                    "cross_adapter", host="cross_attention_adapters", residual_source="encoder_attn_layer_norm",
                    create_host=True, sublayer="encoder_attn",
                ),
                ResidualHook(
                    "output_adapter", host="output_adapters", residual_source="final_layer_norm", create_host=True,
                    sublayer="fc2",
                ),
            ),
            attention="self_attn",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            attn_output="self_attn.out_proj",
            ffn_in=("fc1",),
            ffn_out="fc2",
            intermediate_lora=("fc1",),
            output_lora=("fc2",),
            cross_attention="encoder_attn",
            cross_query="encoder_attn.q_proj",
            cross_key="encoder_attn.k_proj",
            cross_value="encoder_attn.v_proj",
            cross_attn_output="encoder_attn.out_proj",
            position_embeddings="decoder.embed_positions",
        ),
        encoder="encoder",
        decoder_module="decoder",
    ),
    "modernbert": dict(
        name="modernbert",
        model_types=("modernbert",),
        layers="layers",
        residual_hooks=(
            ResidualHook(
                # since issue 23: the residual the adapters read is the sub-block's (normalised) input, as
                # AdapterHub's plug-in interface hooks it (layer_pre_self_attn="attn", layer_pre_ffn="mlp")
                "mh_adapter", host="attention_adapters", residual_source="attn", create_host=True, sublayer="attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="mlp", create_host=True, sublayer="mlp",
            ),
        ),
        attention="attn",
        query="attn.Wqkv",
        key="attn.Wqkv",
        value="attn.Wqkv",
        attn_output="attn.Wo",
        ffn_in=("mlp.Wi",),
        ffn_out="mlp.Wo",
        embeddings="embeddings.tok_embeddings",
        pre_ln=True,
        intermediate_lora=("mlp.Wi",),
        output_lora=("mlp.Wo",),
        embedding_output="embeddings",
    ),
    "t5": dict(
        name="t5",
        model_types=("t5", "mt5"),
        layers="encoder.block",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="layer.0", residual_source="layer.0.layer_norm", sublayer="layer.0.SelfAttention",
            ),
            ResidualHook(
                "output_adapter", host="layer.1", residual_source="layer.1.layer_norm",
                sublayer="layer.1.DenseReluDense",
            ),
        ),
        attention="layer.0.SelfAttention",
        query="layer.0.SelfAttention.q",
        key="layer.0.SelfAttention.k",
        value="layer.0.SelfAttention.v",
        attn_output="layer.0.SelfAttention.o",
        ffn_in=("layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wi_0", "layer.1.DenseReluDense.wi_1"),
        ffn_out="layer.1.DenseReluDense.wo",
        embeddings="shared",
        pre_ln=True,
        intermediate_lora=("layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wi_1"),
        output_lora=("layer.1.DenseReluDense.wo",),
        embedding_output="encoder.embed_tokens",
        second_stack=StackSpec(
            layers="decoder.block",
            residual_hooks=(
                ResidualHook(
                    "mh_adapter", host="layer.0", residual_source="layer.0.layer_norm",
                    sublayer="layer.0.SelfAttention",
                ),
                ResidualHook(
                    "cross_adapter", host="layer.1", residual_source="layer.1.layer_norm",
                    sublayer="layer.1.EncDecAttention",
                ),
                ResidualHook(
                    "output_adapter", host="layer.2", residual_source="layer.2.layer_norm",
                    sublayer="layer.2.DenseReluDense",
                ),
            ),
            attention="layer.0.SelfAttention",
            query="layer.0.SelfAttention.q",
            key="layer.0.SelfAttention.k",
            value="layer.0.SelfAttention.v",
            attn_output="layer.0.SelfAttention.o",
            ffn_in=(
                "layer.2.DenseReluDense.wi",
                "layer.2.DenseReluDense.wi_0",
                "layer.2.DenseReluDense.wi_1",
            ),
            ffn_out="layer.2.DenseReluDense.wo",
            intermediate_lora=("layer.2.DenseReluDense.wi", "layer.2.DenseReluDense.wi_1"),
            output_lora=("layer.2.DenseReluDense.wo",),
            cross_attention="layer.1.EncDecAttention",
            cross_query="layer.1.EncDecAttention.q",
            cross_key="layer.1.EncDecAttention.k",
            cross_value="layer.1.EncDecAttention.v",
            cross_attn_output="layer.1.EncDecAttention.o",
        ),
        encoder="encoder",
        decoder_module="decoder",
    ),
    "phi3": dict(
        name="phi3",
        model_types=("phi3",),
        layers="layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="input_layernorm", create_host=True,
                sublayer="self_attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="post_attention_layernorm", create_host=True,
                sublayer="mlp",
            ),
        ),
        attention="self_attn",
        query="self_attn.qkv_proj",
        key="self_attn.qkv_proj",
        value="self_attn.qkv_proj",
        attn_output="self_attn.o_proj",
        ffn_in=("mlp.gate_up_proj",),
        ffn_out="mlp.down_proj",
        embeddings="embed_tokens",
        pre_ln=True,
        intermediate_lora=("mlp.gate_up_proj",),
        output_lora=("mlp.down_proj",),
        fused_qkv_heads=("num_attention_heads", "num_key_value_heads", "num_key_value_heads"),
    ),
    "vit": dict(
        name="vit",
        model_types=("vit",),
        layers="layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="layernorm_before", create_host=True,
                sublayer="attention",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="layernorm_after", create_host=True,
                sublayer="mlp",
            ),
        ),
        attention="attention",
        query="attention.q_proj",
        key="attention.k_proj",
        value="attention.v_proj",
        attn_output="attention.o_proj",
        ffn_in=("mlp.fc1",),
        ffn_out="mlp.fc2",
        embeddings="embeddings",
        pre_ln=True,
        intermediate_lora=("mlp.fc1",),
        output_lora=("mlp.fc2",),
        legacy_key_renames=(
            (
                "(^|\\.)layers\\.(\\d+)\\.output\\.output_adapters\\.",
                "\\1layers.\\2.output_adapters.",
            ),
        ),
    ),
    "whisper": dict(
        name="whisper",
        model_types=("whisper",),
        layers="encoder.layers",
        residual_hooks=(
            ResidualHook(
                "mh_adapter", host="attention_adapters", residual_source="self_attn_layer_norm", create_host=True,
                sublayer="self_attn",
            ),
            ResidualHook(
                "output_adapter", host="output_adapters", residual_source="final_layer_norm", create_host=True,
                sublayer="fc2",
            ),
        ),
        attention="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_output="self_attn.out_proj",
        ffn_in=("fc1",),
        ffn_out="fc2",
        embeddings="decoder.embed_tokens",
        pre_ln=True,
        intermediate_lora=("fc1",),
        output_lora=("fc2",),
        refused_methods=(
            (
                "prompt_tuning",
                "its encoder reads audio features, not token embeddings a soft prompt could join; prefix tuning's "
                "encoder_prefix reaches the encoder",
            ),
        ),
        second_stack=StackSpec(
            layers="decoder.layers",
            residual_hooks=(
                ResidualHook(
                    "mh_adapter", host="attention_adapters", residual_source="self_attn_layer_norm", create_host=True,
                    sublayer="self_attn",
                ),
                ResidualHook(
                    "cross_adapter", host="cross_attention_adapters", residual_source="encoder_attn_layer_norm",
                    create_host=True, sublayer="encoder_attn",
                ),
                ResidualHook(
                    "output_adapter", host="output_adapters", residual_source="final_layer_norm", create_host=True,
                    sublayer="fc2",
                ),
            ),
            attention="self_attn",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            attn_output="self_attn.out_proj",
            ffn_in=("fc1",),
            ffn_out="fc2",
            intermediate_lora=("fc1",),
            output_lora=("fc2",),
            cross_attention="encoder_attn",
            cross_query="encoder_attn.q_proj",
            cross_key="encoder_attn.k_proj",
            cross_value="encoder_attn.v_proj",
            cross_attn_output="encoder_attn.out_proj",
            position_embeddings="decoder.embed_positions",
        ),
        encoder="encoder",
        decoder_module="decoder",
    ),
}

# (role, attention_location, sub_config) per stack, as the old ArchitectureSpec.stacks() derived them
OLD_STACK_ROLES = {
    "albert": [("layers", "self", None)],
    "bart": [("encoder", "encoder", None), ("decoder", "self", None)],
    "bert": [("layers", "self", None)],
    "clip": [("text", "clip_text_model_self", "text_config"), ("vision", "clip_vision_model_self", "vision_config")],
    "clip_text_model": [("layers", "self", None)],
    "clip_vision_model": [("layers", "self", None)],
    "deberta-v2": [("layers", "self", None)],
    "distilbert": [("layers", "self", None)],
    "gemma": [("layers", "self", None)],
    "gpt2": [("layers", "self", None)],
    "gpt_neox": [("layers", "self", None)],
    "gptj": [("layers", "self", None)],
    "llama": [("layers", "self", None)],
    "mbart": [("encoder", "encoder", None), ("decoder", "self", None)],
    "modernbert": [("layers", "self", None)],
    "t5": [("encoder", "encoder", None), ("decoder", "self", None)],
    "phi3": [("layers", "self", None)],
    "vit": [("layers", "self", None)],
    "whisper": [("encoder", "encoder", None), ("decoder", "self", None)],
}

# issue 23 (deliberate changes): AdapterHub's checkpoint keys of an encoder-decoder's invertible adapters and of
# DistilBERT's prefixes load; prefix tuning enters GPT-J's and DeBERTa-v2's attention through a class swap
from adapters.models.bart import INVERTIBLE_IN_ENCODER  # noqa: E402
from adapters.models.deberta import DEBERTA_V2, DisentangledPrefixAttention  # noqa: E402
from adapters.models.gptj import GPTJ, GPTJPrefixAttention  # noqa: E402

for _name in ("bart", "mbart", "t5", "whisper"):  # (whisper: built by bart_like_spec; nothing to rename there)
    LEGACY_KEYWORDS[_name]["legacy_key_renames"] = INVERTIBLE_IN_ENCODER
LEGACY_KEYWORDS["distilbert"]["legacy_key_renames"] = (
    (r"^prefix_tuning\.prefix_tunings\.([^.]+)\.self\.", r"prefix_tuning.prefix_tunings.\1.self_prefix."),
)
# (Llama-Adapter stays refused there: its reason text is the spec's)
for _name, _mixin, _spec in (("gptj", GPTJPrefixAttention, GPTJ), ("deberta-v2", DisentangledPrefixAttention, DEBERTA_V2)):
    del LEGACY_KEYWORDS[_name]["attention_interface"]
    LEGACY_KEYWORDS[_name]["attention_mixin"] = _mixin
    LEGACY_KEYWORDS[_name]["refused_methods"] = _spec.refused_methods
# (AdapterHub's placements: GPT-J's FFN adapters read the stream after the attention adapters;
# DeBERTa-v2's prompt joins the embeddings output, which is handed the text's own mask)
LEGACY_KEYWORDS["gptj"]["residual_hooks"] = GPTJ.residual_hooks
LEGACY_KEYWORDS["deberta-v2"].update(embeddings="embeddings", embedding_mask="mask")
del LEGACY_KEYWORDS["deberta-v2"]["embedding_output"]
# (AdapterHub's prefix key of a CLIP tower alone, and CLIPModel's invertible adapters in the text tower)
from adapters.models.clip import CLIP, CLIP_TEXT  # noqa: E402

LEGACY_KEYWORDS["clip_text_model"]["legacy_key_renames"] = CLIP_TEXT.legacy_key_renames
LEGACY_KEYWORDS["clip_vision_model"]["legacy_key_renames"] = CLIP_TEXT.legacy_key_renames
LEGACY_KEYWORDS["clip"]["legacy_key_renames"] = CLIP.legacy_key_renames
# (AdapterHub's ViT prefix gates in ViTSelfAttention)
from adapters.models.vit import VIT  # noqa: E402

LEGACY_KEYWORDS["vit"]["legacy_key_renames"] = VIT.legacy_key_renames
# (issue 23: save_adapter writes AdapterHub's key names, the inverse of the renames above)
from adapters.models.bart import INVERTIBLE_TO_ENCODER  # noqa: E402
from adapters.models.distilbert import DISTILBERT  # noqa: E402
from adapters.models.t5 import T5  # noqa: E402

for _name in ("bart", "mbart", "whisper"):
    LEGACY_KEYWORDS[_name]["adapterhub_key_renames"] = INVERTIBLE_TO_ENCODER
for _name, _spec in (("t5", T5), ("distilbert", DISTILBERT), ("clip_text_model", CLIP_TEXT),
                     ("clip_vision_model", CLIP_TEXT), ("clip", CLIP), ("vit", VIT)):
    LEGACY_KEYWORDS[_name]["adapterhub_key_renames"] = _spec.adapterhub_key_renames
