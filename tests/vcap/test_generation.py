"""GenerationOptions: one checked value for every captioning path."""

from __future__ import annotations

import dataclasses

import pytest

from vcap.config import ConfigError
from vcap.generation import GenerationOptions


@pytest.mark.parametrize("change, field", [
    ({"lang": "fr"}, "lang"), ({"sampling": "creative"}, "sampling"), ({"thinking_budget": -1}, "thinking_budget"),
    ({"temperature": 0.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_a_bad_value_names_its_option(change, field):
    with pytest.raises(ConfigError, match=field):
        GenerationOptions(**change)


def test_frozen_and_changed_by_keyword():
    base = GenerationOptions(lang="en", max_new_tokens=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.lang = "ko"
    changed = GenerationOptions.of(base, thinking=True)
    assert (changed.lang, changed.max_new_tokens, changed.thinking) == ("en", 16, True) and not base.thinking
    assert GenerationOptions.of(None, lang="en") == GenerationOptions(lang="en")


def test_sampling_is_greedy_unless_a_preset_is_named():
    from qwen3_backbone.generate import SAMPLING_PRESETS

    assert not GenerationOptions(temperature=0.5).sampling_config().do_sample  # overrides alone stay greedy
    sampled = GenerationOptions(sampling="non-thinking", top_p=0.9).sampling_config()
    assert sampled.do_sample and sampled.top_p == 0.9
    assert sampled.temperature == SAMPLING_PRESETS["non-thinking"].temperature


def test_the_key_changes_with_every_option():
    keys = {GenerationOptions(**change).key() for change in (
        {}, {"lang": "en"}, {"prompt": "x"}, {"thinking": True}, {"thinking_budget": 4}, {"sampling": "thinking"},
        {"temperature": 0.5}, {"top_p": 0.5}, {"top_k": 5}, {"seed": 1}, {"max_new_tokens": 9})}
    assert len(keys) == 11
