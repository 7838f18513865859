"""The Qwen3 language model, dense and Mixture-of-Experts: the whole forward pass in one file.

Module names are the Hugging Face checkpoint keys (``model.layers.3.self_attn.q_proj``,
``model.layers.3.mlp.experts.7.down_proj``, ``lm_head``), so loading a checkpoint is an identity
map. Whether a layer's MLP is dense or a sparse MoE block is read from the config per layer.

Numerics follow transformers' ``modeling_qwen3.py`` / ``modeling_qwen3_moe.py``: RMSNorm in fp32
with the weight applied after casting back; per-head RMSNorm on q and k before RoPE; split-half
RoPE whose tables are computed in fp32; attention through SDPA (softmax accumulates in fp32);
router softmax in fp32, then top-k, then renormalisation when ``norm_topk_prob``.

Notation used in the shape comments:
    B   batch size                      S   tokens in this call (query length)
    K   key/value length (cache + S)    D   hidden_size
    H   num_attention_heads             Hkv num_key_value_heads
    G   query heads per kv head (H/Hkv) hd  head_dim
    I   intermediate size of an MLP     V   vocab_size
    T   tokens flattened (B*S)          E   num_experts
    k   num_experts_per_tok             N   routed (token, expert) pairs = T*k
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .cache import KVCache
from .config import Qwen3Config, yarn_get_mscale


# CPU inference kernels (measured in bench/backbone.py, docs/benchmarks.md):
# - fp32: oneDNN's inner product streams weights 1.5-2x faster than the default (MKL) sgemm on
#   the AMD EPYC CPUs this project is measured on, for decoding and prefill alike. It has no
#   autograd formula, so training keeps F.linear.
# - bf16: oneDNN on weights reordered into its blocked layout is ~2x faster than on the plain
#   layout; ``pack_for_cpu_inference`` reorders the weights in place (no extra memory but a
#   tied head's packed copy).
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoint keys) with faster CPU inference paths."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_mkldnn:  # packed by pack_for_cpu_inference (frozen)
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        if (
            _ONEDNN_LINEAR
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()  # Inductor lowers F.linear itself
        ):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def pack_for_cpu_inference(model: nn.Module) -> int:
    """Reorder every bf16 CPU ``Linear`` weight into oneDNN's blocked layout, in place.

    For inference on a CPU: decoding reads the weights ~2x faster. Each packed weight replaces its
    plain one, so packing costs no memory, except for a head tied to the input embeddings: the
    embedding lookup needs the plain layout, so the head gets a packed copy of its own (V x D more;
    the plain embedding rows stay memory-mapped where the loader left them so). The packed weights
    are frozen. ``save_pretrained`` writes packed models in the normal format; ``unpack_weights``
    restores plain (and tied) weights, for training or merging adapters. Returns how many weights
    were packed.
    """
    if not _ONEDNN_LINEAR:
        return 0
    packed = 0
    for module in model.modules():
        w = module.weight if isinstance(module, Linear) else None
        if w is None or w.is_mkldnn or w.dtype != torch.bfloat16 or w.device.type != "cpu":
            continue
        module.weight = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1), requires_grad=False)
        packed += 1
    return packed


def unpack_weights(model: nn.Module) -> int:
    """Undo ``pack_for_cpu_inference``: plain (dense) weights again, a tied head tied again to the
    input embeddings. Returns how many weights were unpacked."""
    unpacked = 0
    for module in model.modules():
        if isinstance(module, Qwen3ForCausalLM) and module.config.tie_word_embeddings \
                and module.lm_head.weight.is_mkldnn:
            module.lm_head.weight = module.model.embed_tokens.weight  # the packed copy goes
            unpacked += 1
    for module in model.modules():
        if isinstance(module, Linear) and module.weight.is_mkldnn:
            module.weight = nn.Parameter(module.weight.to_dense(), requires_grad=False)
            unpacked += 1
    return unpacked


class Qwen3RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# -- rotary position embedding -----------------------------------------------------------------

def rope_inv_freq(config: Qwen3Config) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (hd/2,) in fp32 and the attention scaling applied to cos/sin.

    ``default``, ``linear`` and ``yarn`` are computed exactly as transformers'
    ``modeling_rope_utils`` computes them (YaRN: ramp between interpolated and extrapolated
    frequencies over the truncated correction range, attention factor 0.1*ln(factor)+1).
    """
    dim, base = config.head_dim, config.rope_theta
    exponent = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    scaling = config.rope_scaling or {}
    rope_type = config.rope_type
    if rope_type == "default":
        return 1.0 / (base**exponent), 1.0
    factor = scaling["factor"]
    if rope_type == "linear":
        return 1.0 / (base**exponent) / factor, 1.0
    # yarn
    original_max = scaling.get("original_max_position_embeddings", config.max_position_embeddings)
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original_max / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    keep_extrapolated = 1 - ramp
    inv_freq = interpolation * (1 - keep_extrapolated) + extrapolation * keep_extrapolated
    return inv_freq, float(attention_factor)


class Qwen3RotaryEmbedding(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        inv_freq, self.attention_scaling = rope_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, S) -> cos, sin (B, S, hd), computed in fp32 and cast to ``dtype``."""
        freqs = position_ids[..., None].float() * self.inv_freq.float()  # (B, S, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, S, hd)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, S, hd); cos/sin (B, S, hd) -> rotated x (B, heads, S, hd)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, S, hd)
    return x * cos + rotate_half(x) * sin


# -- attention ---------------------------------------------------------------------------------

def grouped_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """q (B, H, S, hd), k/v (B, Hkv, K, hd), mask (B, 1, S, K) bool or None (causal) -> (B, H, S, hd).

    K/V heads are never repeated in memory: a one-token decode step folds the G query heads that
    share a kv head into the query axis; longer queries use SDPA's native GQA.
    """
    B, H, S, hd = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=S > 1, enable_gqa=G > 1)
    if S == 1 and G > 1:
        out = F.scaled_dot_product_attention(q.reshape(B, Hkv, G, hd), k, v, attn_mask=mask)  # (B, Hkv, G, hd)
        return out.reshape(B, H, 1, hd)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=G > 1)


class Qwen3Attention(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim,
        )
        D, H, Hkv, hd, bias = config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, config.attention_bias
        self.q_proj = Linear(D, H * hd, bias=bias)
        self.k_proj = Linear(D, Hkv * hd, bias=bias)
        self.v_proj = Linear(D, Hkv * hd, bias=bias)
        self.o_proj = Linear(H * hd, D, bias=bias)
        self.q_norm = Qwen3RMSNorm(hd, eps=config.rms_norm_eps)  # per head, before RoPE
        self.k_norm = Qwen3RMSNorm(hd, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        """x (B, S, D) -> (B, S, D)."""
        B, S, _ = x.shape
        hd = self.head_dim
        q = self.q_norm(self.q_proj(x).view(B, S, self.num_heads, hd)).transpose(1, 2)  # (B, H, S, hd)
        k = self.k_norm(self.k_proj(x).view(B, S, self.num_kv_heads, hd)).transpose(1, 2)  # (B, Hkv, S, hd)
        v = self.v_proj(x).view(B, S, self.num_kv_heads, hd).transpose(1, 2)  # (B, Hkv, S, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, K, hd)
        out = grouped_query_attention(q, k, v, mask)  # (B, H, S, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.num_heads * hd))


# -- feed-forward: dense MLP and sparse Mixture-of-Experts ---------------------------------------

class Qwen3MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3SparseMoeBlock(nn.Module):
    """Top-k routed experts without a shared expert (Qwen3-30B-A3B, Qwen3-235B-A22B).

    Dispatch groups the routed (token, expert) pairs by expert with one stable sort, so each
    expert that received tokens runs once on a contiguous slice; experts that received none are
    skipped. The only host synchronisation is one read of the per-expert counts per layer.
    """

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = config.num_experts_per_tok, config.norm_topk_prob
        self.gate = Linear(config.hidden_size, config.num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(
            Qwen3MLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.num_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, S, D) -> (B, S, D)."""
        B, S, D = x.shape
        x = x.reshape(B * S, D)  # (T, D)
        router_logits = self.gate(x)  # (T, E)
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)  # (T, E) fp32
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # (T, k), (T, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)

        flat_choice = chosen.reshape(-1)  # (N,)
        order = torch.argsort(flat_choice, stable=True)  # (N,) pairs grouped by expert, ascending
        token_of_pair = order // self.top_k  # (N,)
        counts = torch.bincount(flat_choice, minlength=len(self.experts)).tolist()  # one sync per layer
        routed = x.index_select(0, token_of_pair)  # (N, D), grouped by expert
        outputs = [
            self.experts[e](chunk) for e, chunk in enumerate(routed.split(counts)) if counts[e]
        ]
        y = torch.cat(outputs) * weights.reshape(-1).index_select(0, order)[:, None]  # (N, D)
        out = torch.zeros_like(x).index_add_(0, token_of_pair, y)  # (T, D)
        return out.view(B, S, D)


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Qwen3Attention(config, layer_idx)
        if config.is_moe_layer(layer_idx):
            self.mlp: nn.Module = Qwen3SparseMoeBlock(config)
        else:
            self.mlp = Qwen3MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x (B, S, D) -> (B, S, D)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


# -- the stack ---------------------------------------------------------------------------------

class Qwen3Model(nn.Module):
    """Embeddings, decoder layers and the final norm: ids or embeddings in, hidden states out."""

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        visible: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See :meth:`Qwen3ForCausalLM.forward`; returns hidden states (B, S, D)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, S, D)
        B, S, _ = x.shape
        mask, positions = self._mask_and_positions(attention_mask, cache, B, S, x.device)
        if visible is not None:
            mask = self._restrict(mask, visible, cache, S)
        if position_ids is not None:
            positions = position_ids
        cos, sin = self.rotary_emb(positions, x.dtype)  # (B, S, hd) each

        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(S)
        return self.norm(x)

    @staticmethod
    def _mask_and_positions(
        attention_mask: torch.Tensor | None, cache: KVCache | None, B: int, S: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The attention mask (B, 1, S, K) bool (None: plain causal) and RoPE positions (B, S).

        Positions count only real tokens, so every row of a left- or right-padded batch gets the
        positions it would have alone. A padding query may attend to itself, so no softmax row is
        empty (its output is never used).
        """
        if cache is None:
            if attention_mask is None or bool(attention_mask.all()):
                return None, torch.arange(S, device=device).expand(B, S)
            valid = attention_mask.bool()  # (B, S)
            positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
            causal = torch.ones(S, S, dtype=torch.bool, device=device).tril()  # (S, S)
            mask = (causal & valid[:, None, :]) | torch.eye(S, dtype=torch.bool, device=device)  # (B, S, S)
            return mask[:, None], positions

        valid_new = (
            torch.ones(B, S, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
        )
        positions = cache.next_position[:, None] + (valid_new.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
        valid, query_pos = cache.append_mask(valid_new)  # (B, K) keys that hold real tokens; (S,) slots
        if S == 1:
            return valid[:, None, None, :], positions  # (B, 1, 1, K): a new token sees every real key
        key_pos = torch.arange(valid.shape[1], device=device)  # (K,)
        causal = key_pos[None, :] <= query_pos[:, None]  # (S, K)
        mask = (causal & valid[:, None, :]) | (key_pos[None, :] == query_pos[:, None])  # (B, S, K)
        return mask[:, None], positions

    @staticmethod
    def _restrict(mask: torch.Tensor | None, visible: torch.Tensor, cache: KVCache | None, S: int) -> torch.Tensor:
        """``mask`` (B, 1, S, K), or None for plain causal, narrowed to the keys ``visible`` (B, S, K0)
        allows among the first K0 (keys past K0 stay as they were). A query always sees itself."""
        B, _, K0 = visible.shape
        if mask is None:  # no cache, no padding: build the causal mask
            mask = torch.ones(S, S, dtype=torch.bool, device=visible.device).tril().expand(B, 1, S, S)
        K = mask.shape[-1]
        if K0 > K:
            raise ValueError(f"visible covers {K0} keys but there are only {K}")
        allowed = torch.ones(B, S, K, dtype=torch.bool, device=visible.device)
        allowed[..., :K0] = visible.bool()
        first = cache.length if cache is not None else 0  # the keys' slot of the first query
        query_pos = torch.arange(first, first + S, device=visible.device)  # (S,)
        allowed |= torch.arange(K, device=visible.device)[None, :] == query_pos[:, None]  # (B, S, K)
        return mask & allowed[:, None]


class Qwen3ForCausalLM(nn.Module):
    """Qwen3 with its language-model head: ``model`` (the stack) and ``lm_head``."""

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if not self.lm_head.weight.is_meta:  # meta tensors hold no values to initialise
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module, std: float = 0.02) -> None:
        """transformers' initialisation: normal(0, 0.02) weights, zero biases, unit norms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Qwen3RMSNorm):
            nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int | None = None,
        visible: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for a batch.

        input_ids (B, S) or inputs_embeds (B, S, D): exactly one.
        attention_mask (B, S): 1 for real tokens, 0 for padding (left or right), for the tokens
            of this call only; a ``cache`` remembers the masks of earlier calls.
        position_ids (B, S): optional; by default each row counts its own real tokens.
        cache: a :class:`KVCache` to read past keys/values from and append these to.
        logits_to_keep: compute logits only for the last n positions (None: all).
        visible (B, S, K0) bool: optionally, which of the first K0 keys (cache included) each query
            may see, on top of the causal and padding masks; keys past K0 are not restricted.
            A captioner uses it to hide video tokens from an event's caption (vcap/windows.py).
        Returns logits (B, S or n, V) in the model's dtype.
        """
        hidden = self.model(input_ids, inputs_embeds, attention_mask, position_ids, cache, visible)  # (B, S, D)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return self.lm_head(hidden)  # (B, S, V)

    def new_cache(self, batch_size: int, max_length: int, static: bool = False) -> KVCache:
        """A preallocated KV cache on the model's device and dtype (``static``: for torch.compile)."""
        weight = self.model.embed_tokens.weight
        return KVCache(self.config, batch_size, max_length, dtype=weight.dtype, device=weight.device, static=static)

    def gradient_checkpointing_enable(self) -> None:
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing = False

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype
