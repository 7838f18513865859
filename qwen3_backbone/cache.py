"""A preallocated key/value cache for every layer of a Qwen3 model.

Shapes (notation of model.py): keys and values (L, B, Hkv, max_length, hd); ``valid`` (B,
max_length), which cached positions hold real tokens (False for padding and unused slots); and,
per row, the RoPE position the next real token gets. New keys/values are written at the cursor,
which the model advances once all layers have written; nothing is reallocated while decoding.

Two modes:
- dynamic (default): the cursor is a Python int and attention reads only the filled prefix.
- static: the cursor is a tensor, writes use ``index_copy_`` and attention reads the whole buffer
  under the mask, so every decode step has the same shapes: what ``torch.compile`` (and CUDA
  graphs) need to compile the decode step once.
"""

from __future__ import annotations

import torch

from .config import Qwen3Config


class KVCache:
    def __init__(
        self,
        config: Qwen3Config,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        static: bool = False,
    ) -> None:
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_length, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, Hkv, max_length, hd)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)  # (B, max_length)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        self.max_length = max_length
        self.static = static
        self._length = 0  # dynamic mode cursor
        self._cursor = torch.zeros((), dtype=torch.long, device=device)  # static mode cursor

    @property
    def length(self) -> int:
        """Positions filled so far (the same for every row)."""
        return int(self._cursor) if self.static else self._length

    def append_mask(self, valid_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record which of the S new positions are real tokens.

        valid_new (B, S) bool -> (valid keys (B, K) bool, absolute positions of the S new slots (S,)).
        """
        S = valid_new.shape[1]
        self.next_position += valid_new.sum(-1)
        if self.static:
            slots = self._cursor + torch.arange(S, device=valid_new.device)  # (S,)
            self.valid.index_copy_(1, slots, valid_new)
            return self.valid, slots
        end = self._length + S
        if end > self.max_length:
            raise ValueError(
                f"KV cache is full: {self._length} cached + {S} new tokens exceed max_length={self.max_length}"
            )
        self.valid[:, self._length : end] = valid_new
        return self.valid[:, :end], torch.arange(self._length, end, device=valid_new.device)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, Hkv, S, hd) at the cursor; return the keys/values to attend to (B, Hkv, K, hd)."""
        S = k.shape[2]
        if self.static:
            slots = self._cursor + torch.arange(S, device=k.device)
            self.keys[layer_idx].index_copy_(2, slots, k)
            self.values[layer_idx].index_copy_(2, slots, v)
            return self.keys[layer_idx], self.values[layer_idx]
        end = self._length + S
        self.keys[layer_idx, :, :, self._length : end] = k
        self.values[layer_idx, :, :, self._length : end] = v
        return self.keys[layer_idx, :, :, :end], self.values[layer_idx, :, :, :end]

    def advance(self, S: int) -> None:
        """Called by the model once every layer has written its S new positions."""
        if self.static:
            self._cursor += S
        else:
            self._length += S
