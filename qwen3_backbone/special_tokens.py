"""Qwen3's vocabulary layout: 151,643 byte-level BPE tokens, then the 26 special tokens at fixed ids."""

NUM_BASE_TOKENS = 151643

# The 26 Qwen3 special tokens at their ids, with the ``special`` flag of the official
# tokenizer_config.json (the tool, FIM and think tokens are not "special", so
# ``skip_special_tokens`` keeps them).
SPECIAL_TOKENS: dict[str, tuple[int, bool]] = {
    "<|endoftext|>": (151643, True),
    "<|im_start|>": (151644, True),
    "<|im_end|>": (151645, True),
    "<|object_ref_start|>": (151646, True),
    "<|object_ref_end|>": (151647, True),
    "<|box_start|>": (151648, True),
    "<|box_end|>": (151649, True),
    "<|quad_start|>": (151650, True),
    "<|quad_end|>": (151651, True),
    "<|vision_start|>": (151652, True),
    "<|vision_end|>": (151653, True),
    "<|vision_pad|>": (151654, True),
    "<|image_pad|>": (151655, True),
    "<|video_pad|>": (151656, True),
    "<tool_call>": (151657, False),
    "</tool_call>": (151658, False),
    "<|fim_prefix|>": (151659, False),
    "<|fim_middle|>": (151660, False),
    "<|fim_suffix|>": (151661, False),
    "<|fim_pad|>": (151662, False),
    "<|repo_name|>": (151663, False),
    "<|file_sep|>": (151664, False),
    "<tool_response>": (151665, False),
    "</tool_response>": (151666, False),
    "<think>": (151667, False),
    "</think>": (151668, False),
}
