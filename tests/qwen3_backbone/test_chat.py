"""The chat renderer against the official Qwen3 template, tokenized form, thinking helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM
from qwen3_backbone.chat import (
    EARLY_STOP_THINKING,
    VideoTurn,
    render,
    ThinkingSplitter,
    split_ids,
    split_thinking,
    thinking_budget,
    tokenize,
    video_message,
)
from qwen3_backbone.generate import generate
from qwen3_backbone.tokenizer import Qwen3Tokenizer

TEMPLATE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "qwen3_chat_template.jinja"


@pytest.fixture(scope="module")
def tokenizer() -> Qwen3Tokenizer:
    return Qwen3Tokenizer.load()


@pytest.fixture(scope="module")
def official():
    if not TEMPLATE.exists():
        message = f"the official template is not at {TEMPLATE} (../shared/reference is not beside the checkout)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run the parity tests, not skip them")
        pytest.skip(message)
    from transformers.utils.chat_template_utils import render_jinja_template

    template = TEMPLATE.read_text(encoding="utf-8")

    def run(messages, tools=None, add_generation_prompt=False, enable_thinking=None):
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        rendered, _ = render_jinja_template([messages], tools=tools, chat_template=template,
                                            add_generation_prompt=add_generation_prompt, **kwargs)
        return rendered[0]

    return run


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "날씨 조회",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "이 영상을 한국어로 자세히 묘사해 주세요."}],
    "system": [{"role": "system", "content": "You are a captioner."}, {"role": "user", "content": "Describe it."}],
    "multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Caption this /no_think"},
    ],
    "reasoning_content": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "\nTwo plus two is four.\n"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "Three plus three."},
    ],
    "think_inside_content": [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nold thought\n</think>\n\nanswer one"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "<think>new thought</think>answer two"},
    ],
    "empty_reasoning_last": [{"role": "user", "content": "caption"}, {"role": "assistant", "content": "A red ball."}],
    "tools": [
        {"role": "system", "content": "도구를 쓰세요."},
        {"role": "user", "content": "서울 날씨?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "서울"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "부산"}'}}]},
        {"role": "tool", "content": "맑음"},
        {"role": "tool", "content": "비"},
        {"role": "assistant", "content": "서울은 맑고 부산은 비가 옵니다."},
    ],
    "tool_call_with_content": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Seoul"}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "user", "content": "<tool_response>\nwrapped\n</tool_response>"},
        {"role": "assistant", "content": "It is sunny.", "reasoning_content": "The tool said sunny."},
    ],
    "non_string_content": [{"role": "user", "content": None}, {"role": "assistant", "content": ["x"]},
                           {"role": "user", "content": "ok"}],
    "system_later": [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}],
    "control_strings_typed_by_user": [{"role": "user", "content": "say <|im_end|> and <think> please"}],
}
TOOLS = {"tools": [WEATHER_TOOL], "tool_call_with_content": [WEATHER_TOOL]}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("enable_thinking", [None, True, False])
def test_render_is_byte_identical_to_the_official_template(official, name, add_generation_prompt, enable_thinking):
    messages, tools = CONVERSATIONS[name], TOOLS.get(name)
    expected = official(messages, tools, add_generation_prompt, enable_thinking)
    assert render(messages, tools, add_generation_prompt, enable_thinking) == expected


def test_common_cases_as_literal_strings():
    assert render([{"role": "user", "content": "안녕"}], add_generation_prompt=True) == (
        "<|im_start|>user\n안녕<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                  add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert render(CONVERSATIONS["empty_reasoning_last"]) == (
        "<|im_start|>user\ncaption<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA red ball.<|im_end|>\n"
    )


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_tokenized_form_decodes_to_the_rendered_text(tokenizer, name):
    messages, tools = CONVERSATIONS[name], TOOLS.get(name)
    ids, mask = tokenize(tokenizer, messages, tools)
    assert len(ids) == len(mask)
    assert tokenizer.decode(ids) == render(messages, tools)


USER_TYPED_CONTROL_STRINGS = {"control_strings_typed_by_user", "tool_call_with_content"}  # by design: plain text


@pytest.mark.parametrize("name", [n for n in CONVERSATIONS if n not in USER_TYPED_CONTROL_STRINGS])
def test_tokenized_ids_equal_tokenizing_the_rendered_text(tokenizer, name):
    """Where no user text looks like a control token, ids equal Hugging Face's tokenization."""
    messages, tools = CONVERSATIONS[name], TOOLS.get(name)
    ids, _ = tokenize(tokenizer, messages, tools, add_generation_prompt=False)
    assert ids == tokenizer.encode(render(messages, tools), parse_special=True)


def test_user_typed_control_strings_stay_text(tokenizer):
    ids, _ = tokenize(tokenizer, CONVERSATIONS["control_strings_typed_by_user"])
    assert ids.count(151645) == 1  # only the template's own <|im_end|>
    assert 151667 not in ids  # no <think>
    hf_style = tokenizer.encode(render(CONVERSATIONS["control_strings_typed_by_user"]), parse_special=True)
    assert hf_style.count(151645) == 2  # what parse_special=True (Hugging Face) would do


def test_loss_mask_covers_exactly_the_generated_tokens(tokenizer):
    messages = CONVERSATIONS["reasoning_content"]
    ids, mask = tokenize(tokenizer, messages)
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    # first answer: reasoning dropped by the template (before the last query); last: reasoning kept
    assert trained == "4<|im_end|><think>\nThree plus three.\n</think>\n\n6<|im_end|>"
    ids, mask = tokenize(tokenizer, CONVERSATIONS["empty_reasoning_last"])
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "A red ball.<|im_end|>"
    prompt = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<|im_end|>\n") or prompt.endswith("\n")
    # the documented alternative: the empty think block in the loss
    ids, mask = tokenize(tokenizer, CONVERSATIONS["empty_reasoning_last"], train_empty_think=True)
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "<think>\n\n</think>\n\nA red ball.<|im_end|>"


def test_loss_mask_prompt_equals_the_inference_prompt(tokenizer):
    """Train/inference agreement: the ids before the target are the non-thinking generation prompt."""
    user = [{"role": "user", "content": "이 영상을 묘사해 주세요."}]
    prompt_ids, prompt_mask = tokenize(tokenizer, user, add_generation_prompt=True, enable_thinking=False)
    ids, mask = tokenize(tokenizer, user + [{"role": "assistant", "content": "빨간 공이 굴러갑니다."}])
    first = mask.index(1)
    assert ids[:first] == prompt_ids and not any(prompt_mask)


def test_tool_calls_are_trained_and_tool_results_are_not(tokenizer):
    ids, mask = tokenize(tokenizer, CONVERSATIONS["tools"], tools=[WEATHER_TOOL])
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "서울"}}\n</tool_call>' in trained
    assert "맑음" not in trained and "도구를" not in trained


def test_video_turn_places_exactly_n_pads(tokenizer):
    messages = [video_message(7, "Describe this video in detail.")]
    ids, mask = tokenize(tokenizer, messages, add_generation_prompt=True, enable_thinking=False)
    start, end = ids.index(151652), ids.index(151653)
    assert ids[start + 1 : end] == [151656] * 7 and ids.count(151656) == 7
    assert tokenizer.decode(ids[end + 1 :]).startswith("Describe this video in detail.<|im_end|>\n<|im_start|>assistant\n")
    assert not any(mask)
    with pytest.raises(ValueError):
        VideoTurn(0, "x")


@pytest.mark.parametrize(
    "output, expected",
    [
        ("<think>\nhmm\n</think>\n\nA cat.", ("hmm", "A cat.")),
        ("<think>\n\n</think>\n\nA cat.<|im_end|>", ("", "A cat.")),
        ("A cat.", ("", "A cat.")),
        ("still thinking when cut off", ("", "still thinking when cut off")),
        ("<think>cut off before closing", ("cut off before closing", "")),
        ("inside a prompt-side think</think>\n\nanswer", ("inside a prompt-side think", "answer")),
    ],
)
def test_split_thinking(output, expected, tokenizer):
    assert split_thinking(output) == expected
    assert split_thinking(tokenizer.encode(output, parse_special=True), tokenizer) == expected
    # the streaming splitter agrees with thinking on (the mode a think block belongs to), whole or piece by piece
    ids = tokenizer.encode(output, parse_special=True)
    assert split_ids(tokenizer, ids, thinking=True) == expected
    splitter, pieces = ThinkingSplitter(tokenizer, thinking=True), {"thinking": "", "answer": ""}
    for token in ids:
        for kind, text in splitter.push(token):
            pieces[kind] += text
    for kind, text in splitter.finish():
        pieces[kind] += text
    assert (pieces["thinking"], pieces["answer"]) == expected


def test_with_thinking_off_everything_outside_a_think_block_is_the_answer(tokenizer):
    for output, expected in [("A cat.", ("", "A cat.")), ("<think>\nx\n</think>\n\nA cat.", ("x", "A cat.")),
                             ("  A\n\ncat. \n<|im_end|>ignored", ("", "A\n\ncat."))]:
        assert split_ids(tokenizer, tokenizer.encode(output, parse_special=True), thinking=False) == expected


def test_a_stream_never_shows_text_it_later_relabels(tokenizer):
    """Thinking on and no <think> opener: the text is held until </think> or the end says what it was."""
    ids = tokenizer.encode("still deciding</think>\n\nA cat.", parse_special=True)
    splitter = ThinkingSplitter(tokenizer, thinking=True)
    events = [event for token in ids for event in splitter.push(token)] + splitter.finish()
    assert events[0] == ("thinking", "still deciding") and "".join(t for k, t in events if k == "answer") == "A cat."


# -- thinking budget with a model whose logits are scripted -------------------------------------

class ScriptedThinker(Qwen3ForCausalLM):
    """Always answers the next token by a table on the last input token; never closes </think>."""

    def __init__(self, script: dict[int, int], default: int) -> None:
        super().__init__(Qwen3Config.from_name("tiny"))
        self.script, self.default = script, default

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None,
                logits_to_keep=None):
        last = input_ids[:, -1].tolist()
        logits = torch.full((len(last), 1, self.config.vocab_size), -1e4)
        for row, token in enumerate(last):
            logits[row, 0, self.script.get(token, self.default)] = 0.0
        return logits


def test_thinking_budget_forces_the_early_stop_text_per_row(tokenizer):
    thought = tokenizer.encode(" hmm")[0]
    answer = tokenizer.encode(" Answer")[0]
    think, end_think = 151667, 151668
    prompt_token = tokenizer.encode("Q")[0]
    # row 0's prompt opens <think> itself; row 1's model opens it as its first token
    model = ScriptedThinker({prompt_token: think, think: thought, thought: thought, 271: answer}, default=answer)
    budget = thinking_budget(tokenizer, max_tokens=5)
    ids = torch.tensor([[prompt_token, think], [prompt_token, prompt_token]])
    out = generate(model, ids, max_new_tokens=60, thinking_budget=budget, stop_token_ids=())
    row0 = out[0].tolist()
    row1 = out[1].tolist()
    assert row0[:5] == [thought] * 5 and list(row0[5 : 5 + len(budget.stop_ids)]) == list(budget.stop_ids)
    assert row1[0] == think and row1[1:6] == [thought] * 5
    text = tokenizer.decode(row0)
    assert EARLY_STOP_THINKING in text
    thinking, answer_text = split_thinking(tokenizer.decode([think] + row0))
    assert thinking.endswith("directly now.") and answer_text.startswith("Answer")
    # without a budget the scripted model never stops thinking
    free = generate(model, ids, max_new_tokens=30, stop_token_ids=())
    assert end_think not in free.tolist()[0]
