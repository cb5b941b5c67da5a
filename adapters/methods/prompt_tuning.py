"""Prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning").

A soft prompt ``S ∈ R^{P × d_model}`` lives in the space of the token embeddings and is joined
to the embedded input ``X``:

    combine="prefix":            [S ; X]
    combine="prefix_after_bos":  [X_0 ; S ; X_1..]      (keeps the BOS token first)

Where ``X`` is taken depends on how the model embeds positions:

* models whose embedding module adds absolute positions, token types and a norm (the BERT
  family): ``X`` is that module's *output*, as in AdapterHub, so the text keeps its pretrained
  positions ``0..T-1`` and the prompt enters the layers as it is (AdapterHub checkpoints
  reproduce);
* the others (Llama-style rotary models, GPT-2): ``X = E[x]``, the input embeddings, as in PEFT;
  the model then numbers the ``P + T`` positions itself, and given position ids are renumbered
  (prompt ``0..P-1``, text from ``P``); token type ids get ``P`` zeros.

Either way the model sees ``P + T`` positions: the attention mask gets ``P`` ones, labels get
``P`` ignored entries (-100), and the outputs (hidden states, logits) have ``P + T`` positions.
``Stack(a, b)`` joins the prompts ``[S_a ; S_b ; X]``.

Generation works with and without the KV cache: the prompt is inserted at the first step only
(when the cache is empty); later steps extend the mask by the prompt columns and shift the
positions the same way, so cached and uncached decoding agree.

``prompt_init="random_uniform"`` draws ``S`` from ``U(-0.5, 0.5)``; ``"from_string"`` copies the
embeddings of the tokens of ``prompt_init_text`` (repeated to ``P`` positions).

State-dict keys follow AdapterHub: ``prompt_tuning.prompt_tunings.<name>.prompt_embedding.weight``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..compat import passed_cache
from ..composition import Stack
from ..configuration.prefix import PromptTuningConfig
from ..context import ForwardContext
from ..errors import AdapterConfigError
from ..hooks.engine import HostCapabilities, setup_members
from ..hooks.signatures import as_keyword_arguments
from .registry import MethodFamily, register

__all__ = [
    "PromptTuning", "PromptTuningPool", "install_prompt_tuning", "uninstall_prompt_tuning", "add_prompt_modules",
    "join_prompts", "encoder_inputs_with_prompts", "decoder_inputs_with_prompts",
]

#: the name of the prompt pool in the base model (AdapterHub's key: ``prompt_tuning.prompt_tunings.<name>``)
POOL_NAME = "prompt_tuning"


class PromptTuning(nn.Module):
    """One soft prompt ``S`` (``prompt_embedding.weight``, ``(P, d_model)``).

    Example::

        >>> PromptTuning(PromptTuningConfig(prompt_length=4), model.get_input_embeddings()).prompt_embedding.weight.shape
        torch.Size([4, 32])
    """

    def __init__(self, config: PromptTuningConfig, input_embeddings: nn.Embedding | int, init_ids=None):
        """``input_embeddings``: the token embedding the prompt lives beside, or just its width
        where the model embeds no tokens (ViT's patches; ``prompt_init="random_uniform"`` only)."""
        super().__init__()
        self.config = config
        dim = input_embeddings if isinstance(input_embeddings, int) else input_embeddings.embedding_dim
        self.prompt_embedding = nn.Embedding(config.prompt_length, dim)
        with torch.no_grad():
            if config.prompt_init == "from_string":
                ids = torch.tensor(list(init_ids), dtype=torch.long, device=input_embeddings.weight.device)
                ids = ids.repeat(config.prompt_length // len(ids) + 1)[: config.prompt_length]
                self.prompt_embedding.weight.copy_(input_embeddings(ids).to(self.prompt_embedding.weight.dtype))
            else:
                nn.init.uniform_(self.prompt_embedding.weight, -0.5, 0.5)

    def forward(self) -> torch.Tensor:
        return self.prompt_embedding.weight


class PromptTuningPool(HostCapabilities, nn.Module):
    """All soft prompts of one model (``base_model.prompt_tuning``); a host like the others.

    Example::

        >>> sorted(model.base_model.prompt_tuning.prompt_tunings)
        ['prompt']
    """

    method = "prompt_tuning"
    layer_idx = -1
    location = "prompt_tuning"

    def __init__(self):
        super().__init__()
        self.prompt_tunings = nn.ModuleDict()
        self.__dict__["_names_cache"] = {}

    @property
    def adapters(self) -> nn.ModuleDict:
        return self.prompt_tunings

    def _invalidate_setup_cache(self) -> None:
        self.__dict__["_names_cache"] = {}

    def delete_adapter(self, name: str) -> None:
        if name in self.prompt_tunings:
            del self.prompt_tunings[name]
        self._invalidate_setup_cache()

    def names_in(self, setup) -> tuple[str, ...]:
        """The prompt-tuning adapters of ``setup`` (cached per setup)."""
        return setup_members(setup, lambda: self.prompt_tunings, self.__dict__["_names_cache"])

    def span(self, setup) -> tuple[int, int]:
        """``(position, length)`` of the prompts ``setup`` joins to the input: position 1 with
        ``combine="prefix_after_bos"`` (of the first prompt), else 0; length 0 when none is active.

        Example::

            >>> pool.span(Stack("prompt"))      # a 4-position prompt, combine="prefix"
            (0, 4)
        """
        names = self.names_in(setup) if setup is not None else ()
        if not names:
            return 0, 0
        prompts = [self.prompt_tunings[n] for n in names]
        return int(prompts[0].config.combine == "prefix_after_bos"), sum(p.config.prompt_length for p in prompts)

    def prepare_forward(self, model, context: ForwardContext, kwargs: dict) -> dict:
        """Join the active prompts to the inputs in ``kwargs`` (see the module docstring)."""
        at, length = self.span(context.setup)
        if not length:
            return kwargs
        prompts = [self.prompt_tunings[n] for n in self.names_in(context.setup)]
        cache = passed_cache(kwargs)
        decoding = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        kwargs = dict(kwargs)
        if not decoding:
            prompt = torch.cat([p() for p in prompts], dim=0)
            labels = kwargs.get("labels")
            if isinstance(labels, torch.Tensor) and labels.dim() == 2:
                kwargs["labels"] = _insert(labels, at, length, -100)
            if self.__dict__.get("embedding_output_module") is not None:
                context.pending_prompt = (at, prompt)  # joined by _join_pending_prompt
                mask = _attention_mask(kwargs)
                if mask is not None and mask.dim() == 2:
                    # the model builds its mask for the P + T positions the layers will see
                    kwargs["attention_mask"] = _insert(mask, at, length, 1)
                return kwargs
            embeds = kwargs.pop("inputs_embeds", None)
            input_ids = kwargs.pop("input_ids", None)
            if embeds is None:
                if input_ids is None:
                    raise AdapterConfigError(
                        f"Prompt tuning joins its prompt to the token embeddings, but the forward call got neither input_ids "
                        f"nor inputs_embeds (arguments: {sorted(kwargs)}); pass one of them."
                    )
                embeds = model.get_input_embeddings()(input_ids)
            kwargs["inputs_embeds"] = _join(embeds, at, prompt)
            token_types = kwargs.get("token_type_ids")
            if isinstance(token_types, torch.Tensor) and token_types.dim() == 2:
                kwargs["token_type_ids"] = _insert(token_types, at, length, 0)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            kwargs["attention_mask"] = _insert(mask, 0 if decoding else at, length, 1)
        positions = kwargs.get("position_ids")
        if isinstance(positions, torch.Tensor):
            if decoding:
                kwargs["position_ids"] = positions + length
            else:
                head = positions[..., :at]
                prompt_positions = (torch.arange(length, device=positions.device) + at).expand(*positions.shape[:-1], length)
                kwargs["position_ids"] = torch.cat([head, prompt_positions, positions[..., at:] + length], dim=-1)
        return kwargs

    def forward(self, *args, **kwargs):  # pragma: no cover - driven by the model's forward
        raise RuntimeError("PromptTuningPool is driven by the model's forward and is not called directly.")


def _join(hidden: torch.Tensor, at: int, prompt: torch.Tensor) -> torch.Tensor:
    """``[hidden[:, :at] ; prompt ; hidden[:, at:]]`` with the prompt repeated over the batch."""
    prompt = prompt.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
    return torch.cat([hidden[:, :at], prompt, hidden[:, at:]], dim=1)


def _attention_mask(kwargs: dict) -> torch.Tensor | None:
    """The given attention mask, or all ones for the input's shape when none is given (None for pixel inputs)."""
    if kwargs.get("attention_mask") is not None:
        return kwargs["attention_mask"]
    reference = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
    if reference is None:  # pixel inputs (ViT): the model attends everywhere without a mask
        return None
    return torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)


def _join_pending_prompt(module, args, output):
    """Forward hook of the embedding module: join the prompt the pool left for this pass."""
    context = ForwardContext.get_context()
    pending = getattr(context, "pending_prompt", None)
    if pending is None:
        return output
    context.pending_prompt = None
    return _join(output, *pending)


def _mask_without_prompt(keyword: str, module, args, kwargs):
    """Forward pre-hook of an embedding module that reads the attention mask (``keyword``): while a
    prompt waits to be joined to its output, the mask it gets (extended by the prompt's positions
    for the layers) loses those positions again."""
    context = ForwardContext.get_context()
    pending = getattr(context, "pending_prompt", None)
    mask = kwargs.get(keyword)
    if pending is None or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    at, prompt = pending
    return args, {**kwargs, keyword: torch.cat([mask[:, :at], mask[:, at + prompt.shape[0]:]], dim=1)}


def _insert(value: torch.Tensor, at: int, length: int, fill) -> torch.Tensor:
    block = torch.full((value.shape[0], length), fill, dtype=value.dtype, device=value.device)
    return torch.cat([value[:, :at], block, value[:, at:]], dim=1)


def install_prompt_tuning(model) -> PromptTuningPool:
    """Give ``model`` its prompt pool (once).

    Example::

        >>> install_prompt_tuning(model).prompt_tunings
        ModuleDict()
    """
    base = model.base_model
    pool = base._modules.get(POOL_NAME)
    if pool is None:
        pool = PromptTuningPool()
        spec = model.__dict__["_adapters_spec"]
        embeddings = base.get_submodule(spec.embeddings)
        if embeddings is not model.get_input_embeddings():
            # the embedding module adds positions and a norm: join the prompt to its output
            pool.__dict__["embedding_output_module"] = embeddings
            embeddings.register_forward_hook(_join_pending_prompt)
            if spec.embedding_mask is not None:  # it reads the mask too: the one of its own input
                embeddings.register_forward_pre_hook(functools.partial(_mask_without_prompt, spec.embedding_mask), with_kwargs=True)
        base.add_module(POOL_NAME, pool)
        model._adapter_hosts.append(pool)
    return pool


def uninstall_prompt_tuning(model) -> None:
    """Take prompt tuning out of ``model`` once its pool holds no prompt: the pool and the hook on
    the embedding module (the inverse of :func:`install_prompt_tuning`).

    Example::

        >>> model.delete_adapter("prompt")      # the last prompt-tuning adapter
        >>> "prompt_tuning" in model.base_model._modules
        False
    """
    base = model.base_model
    pool = base._modules.get(POOL_NAME)
    if pool is None or len(pool.prompt_tunings):
        return
    embeddings = pool.__dict__.get("embedding_output_module")
    if embeddings is not None:  # the hook by identity (a handle would point into the original after a deepcopy)
        for key in [k for k, hook in embeddings._forward_hooks.items() if hook is _join_pending_prompt]:
            del embeddings._forward_hooks[key]
            embeddings._forward_hooks_with_kwargs.pop(key, None)
            embeddings._forward_hooks_always_called.pop(key, None)
        for key in [k for k, hook in embeddings._forward_pre_hooks.items() if getattr(hook, "func", None) is _mask_without_prompt]:
            del embeddings._forward_pre_hooks[key]
            embeddings._forward_pre_hooks_with_kwargs.pop(key, None)
    del base._modules[POOL_NAME]
    hosts = model._adapter_hosts
    hosts[:] = [host for host in hosts if host is not pool]


PROMPT_BLOCKS = (Stack,)


# -- the prompt-tuning family on a model: creation, joining prompts to the inputs, registration -----


def add_prompt_modules(model, name: str, config: PromptTuningConfig, device, dtype) -> bool:
    """Create the soft prompt of adapter ``name`` (initialised from ``prompt_init``).

    Example::

        >>> add_prompt_modules(model, "prompt", PromptTuningConfig(prompt_length=10), "cpu", torch.float32)
        True
    """
    init_ids = None
    token_embeddings = model.get_input_embeddings()
    if not isinstance(token_embeddings, nn.Embedding):  # ViT: patch embeddings, no vocabulary
        if config.prompt_init == "from_string":
            raise AdapterConfigError(
                f"prompt_init='from_string' copies token embeddings, but {type(model).__name__} embeds "
                f"{type(token_embeddings).__name__} inputs, not tokens; use prompt_init='random_uniform'."
            )
        token_embeddings = model.config.hidden_size  # the prompt joins the embedding output
    if config.prompt_init == "from_string":
        init_ids = _prompt_init_ids(model, config)
    pool = install_prompt_tuning(model)
    seed = config.init_weights_seed
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        prompt = PromptTuning(config, token_embeddings, init_ids)
    pool.prompt_tunings[name] = prompt.to(device=device, dtype=dtype).train(model.training)
    pool._invalidate_setup_cache()
    return True


def _prompt_init_ids(model, config: PromptTuningConfig) -> list[int]:
    """The token ids of ``prompt_init_text`` (``prompt_init='from_string'``)."""
    from transformers import AutoTokenizer

    source = config.tokenizer_name_or_path or getattr(model.config, "name_or_path", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as error:
        raise AdapterConfigError(
            f"prompt_init='from_string' needs a tokenizer for prompt_init_text, but {source!r} could not be "
            f"loaded ({type(error).__name__}); set tokenizer_name_or_path in the PromptTuningConfig."
        ) from error
    init_ids = tokenizer(config.prompt_init_text, add_special_tokens=False)["input_ids"]
    if not init_ids:
        raise AdapterConfigError(
            f"prompt_init_text={config.prompt_init_text!r} tokenizes to no tokens; give a text of at least one token."
        )
    return init_ids


def join_prompts(model, context: ForwardContext, call) -> None:
    """Before a forward pass of a single-stack model: join the active soft prompts to the inputs
    (an encoder-decoder's encoder joins them itself, see :func:`encoder_inputs_with_prompts`).

    Example::

        >>> join_prompts(model, context, call)     # run by the model's forward
    """
    pool = model.base_model._modules.get(POOL_NAME)
    if context.setup is None or pool is None or call.entry or model.__dict__["_adapters_spec"].is_encoder_decoder:
        return
    if pool.names_in(context.setup):
        call.set_keyword_arguments(pool.prepare_forward(model, context, call.keyword_arguments()))


def encoder_inputs_with_prompts(model, encoder, context: ForwardContext, kwargs: dict) -> dict:
    """An encoder-decoder's encoder input with the active soft prompts joined (``[S ; E[x]]``, the
    attention mask with ``P`` ones).

    Example::

        >>> kwargs = encoder_inputs_with_prompts(t5, t5.encoder, context, {"input_ids": ids})
    """
    pool = model.base_model._modules.get(POOL_NAME)
    return kwargs if context is None or pool is None else pool.prepare_forward(encoder, context, kwargs)


def decoder_inputs_with_prompts(model, decoder, context: ForwardContext, args: tuple, kwargs: dict) -> tuple:
    """While soft prompts lengthen the encoder output by ``P`` positions, the decoder's
    cross-attention mask (given for the ``T`` input tokens) gets ``P`` ones at the prompt's place.

    Example::

        >>> args, kwargs = decoder_inputs_with_prompts(bart, bart.model.decoder, context, (), kwargs)
    """
    pool = model.base_model._modules.get(POOL_NAME)
    at, length = (0, 0) if context is None or pool is None else pool.span(context.setup)
    if not length:
        return args, kwargs
    kwargs = as_keyword_arguments(decoder, args, kwargs)
    mask, states = kwargs.get("encoder_attention_mask"), kwargs.get("encoder_hidden_states")
    if (
        isinstance(mask, torch.Tensor) and mask.dim() == 2 and isinstance(states, torch.Tensor)
        and states.shape[1] == mask.shape[1] + length
    ):
        block = mask.new_ones(mask.shape[0], length)
        kwargs["encoder_attention_mask"] = torch.cat([mask[:, :at], block, mask[:, at:]], dim=1)
    return (), kwargs


register(MethodFamily(
    name="prompt_tuning", title="Prompt tuning", blocks=PROMPT_BLOCKS, add=add_prompt_modules,
    remove_unused=uninstall_prompt_tuning, installed=lambda model: POOL_NAME in model.base_model._modules,
    before_forward=join_prompts, encoder_inputs=encoder_inputs_with_prompts, decoder_inputs=decoder_inputs_with_prompts,
    interface_method="prompt_tuning",
))
