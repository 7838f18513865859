"""Event windows (vcap/windows.py): which tokens get a window, which video tokens it hides, and
that training (one forward over the whole sample) and captioning (token by token, KV cache) hide
the same keys at every token, as transformers' Qwen3 does given the same mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qwen3_backbone.chat import tokenize, video_message
from qwen3_backbone.tokenizer import Qwen3Tokenizer
from tests.tiny import tiny_captioner
from vcap.config import FramesConfig
from vcap.data import collate
from vcap.generation import GenerationOptions
from vcap.windows import (VIDEO_PAD_ID, LineWindows, VideoKeys, WindowedDecoding, caption_runs, event_time_queries,
                          training_windows, visibility)

ANSWER = "0:00.0 - 0:02.3: 빨간 원 두 개가 왼쪽으로 움직입니다.\n0:02.3 - 0:04.1: a blue square moves up.\n0:04.1 - 0:06.0: x."


@pytest.fixture(scope="module")
def tokenizer():
    return Qwen3Tokenizer.default()


def _sample(tokenizer, answer=ANSWER):
    groups = [("<0.5 seconds>", 2), ("<2.5 seconds>", 2), ("<4.5 seconds>", 2)]
    return tokenize(tokenizer, [video_message(6, "Describe the events.", groups), {"role": "assistant", "content": answer}])


def test_captions_get_their_times_and_the_times_look_forward_from_the_latest_start(tokenizer):
    from itertools import groupby

    lines = LineWindows(tokenizer)
    pieces = [(token, lines.push(token)) for token in tokenizer.encode(ANSWER)]
    runs = [(window, tokenizer.decode([token for token, _ in run])) for window, run in groupby(pieces, key=lambda p: p[1])]
    inf = math.inf
    assert runs == [
        (None, "0:00."),  # the first start sees the whole video
        ((0.0, inf), "0 - 0:02.3"),  # from its last digit on, the times look from it on
        ((0.0, 2.3), ": 빨간 원 두 개가 왼쪽으로 움직입니다"),  # a caption sees its own times
        (None, ".\n"),  # a line's end decides, seeing everything, whether another event follows
        ((0.0, inf), "0:02."),
        ((2.3, inf), "3 - 0:04.1"),
        ((2.3, 4.1), ": a blue square moves up"),
        (None, ".\n"),
        ((2.3, inf), "0:04."),
        ((4.1, inf), "1 - 0:06.0"),
        ((4.1, 6.0), ": x."),
    ]


@pytest.mark.parametrize("text", ["A red circle moves left.", "at 0:01.0 - 0:02.0: not at the line's start",
                                  "0:01 - 0:02: no tenths"])
def test_text_that_is_not_an_event_line_gets_no_window(tokenizer, text):
    lines = LineWindows(tokenizer)
    assert all(lines.push(token) is None for token in tokenizer.encode(text))


def test_a_line_with_backwards_times_gets_no_caption_window(tokenizer):
    lines = LineWindows(tokenizer)
    windows = {lines.push(token) for token in tokenizer.encode("0:02.3 - 0:01.0: backwards times.")}
    assert windows == {None, (2.3, math.inf)}  # its start still holds for what follows


def test_a_window_hides_the_video_tokens_of_the_other_frames(tokenizer):
    ids, trained = _sample(tokenizer)
    pads = [j for j, t in enumerate(ids) if t == VIDEO_PAD_ID]
    runs = caption_runs(tokenizer, ids, trained)
    hidden = training_windows(runs, ids, [0.5, 2.5, 4.5])
    captions = [h for (_, window), (_, h) in zip(runs, hidden) if math.isfinite(window[1])]
    assert [list(h) for h in captions] == [pads[2:], pads[:2] + pads[4:], pads[:4]]
    # the times after a start see the frames after the first one at or after it (the start's own)
    times = {window[0]: list(h) for (_, window), (_, h) in zip(runs, hidden) if math.isinf(window[1])}
    assert times == {0.0: pads[:2], 2.3: pads[:4], 4.1: pads[:4]}  # 4.1: its frame is the last, so it sees that one
    for queries, _ in runs:  # every query is an answer token, in one run per window
        assert all(trained[j] for j in queries) and list(queries) == list(range(queries[0], queries[-1] + 1))


def test_a_window_between_two_frames_sees_the_nearest(tokenizer):
    keys = VideoKeys(np.arange(6), np.repeat([0.5, 2.5, 4.5], 2))
    assert list(keys.hidden((1.2, 2.0))) == [0, 1, 4, 5]  # no frame inside: the one nearest 1.6 (2.5)
    assert list(keys.hidden((2.5, 4.5))) == [0, 1]  # frames on the edges are inside
    assert list(keys.hidden((0.4, math.inf))) == [0, 1]  # a time's window: after the start's first frame
    assert list(keys.hidden((1.0, math.inf))) == [0, 1, 2, 3]
    # a start written on a frame's time may be a change up to 0.05 s later, which the next frame shows
    assert list(keys.hidden((0.5, math.inf))) == [0, 1, 2, 3]
    assert list(keys.hidden((2.45, math.inf))) == [0, 1, 2, 3]  # 2.5 is within 0.05 s: its own frame
    assert list(keys.hidden((2.4, math.inf))) == [0, 1, 2, 3]
    assert list(keys.hidden((4.5, math.inf))) == [0, 1, 2, 3]  # its own frame is the last: it sees that one
    assert list(keys.hidden((9.0, math.inf))) == [0, 1, 2, 3]  # past the last frame: the last one
    with pytest.raises(ValueError, match="cannot be split"):
        VideoKeys.of([VIDEO_PAD_ID] * 5, [0.0, 1.0])


def test_collate_builds_the_mask_only_when_a_sample_has_windows(tokenizer):
    ids, trained = _sample(tokenizer)
    labels = [ids[j + 1] if trained[j + 1] else -100 for j in range(len(ids) - 1)] + [-100]
    runs = training_windows(caption_runs(tokenizer, ids, trained), ids, [0.5, 2.5, 4.5])
    item = {"features": None, "input_ids": ids, "labels": labels, "windows": runs}
    short = {"features": None, "input_ids": ids[:10], "labels": labels[:10], "windows": []}
    assert collate([dict(item, windows=[]), short], pad_id=0)["visible"] is None
    visible = collate([short, item], pad_id=0)["visible"]
    assert visible.shape == (2, len(ids), len(ids)) and visible[0].all()
    queries, hidden = runs[1]
    assert not visible[1][queries][:, hidden].any()
    assert int((~visible[1]).sum()) == sum(len(q) * len(h) for q, h in runs)
    assert visibility([[], []], 4) is None


def test_captioning_hides_the_keys_training_hides(tokenizer, tmp_path):
    """The answer fed token by token through the KV cache with WindowedDecoding gives the logits of
    one forward over the whole sample with the training mask, and transformers' Qwen3 given that
    mask as a custom 4D attention mask gives them too; and the windows change them."""
    from transformers import Qwen3ForCausalLM as Reference

    from qwen3_backbone import save_pretrained

    captioner = tiny_captioner(seed=3, event_windows=True,
                               frames=FramesConfig(num_frames=4, size=64, timestamps="text")).eval()
    clip = captioner.read(np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8))
    ids, mask, embeds, _ = captioner.prepare([clip], GenerationOptions(dense=True, lang="en"))
    answer = tokenizer.encode("0:00.0 - 0:01.5: a red circle.\n0:01.5 - 0:03.0: two squares.")
    backbone, S, n = captioner.backbone, ids.shape[1], len(answer)
    group_times = captioner.group_times(clip.timestamps)

    with torch.no_grad():
        cache = backbone.new_cache(1, S + n)
        backbone(inputs_embeds=embeds, attention_mask=mask, cache=cache, logits_to_keep=1)
        decoding = WindowedDecoding(tokenizer, [VideoKeys.of(ids[0].numpy(), group_times)], S)
        stepped = []
        for token in answer:
            keys = decoding(torch.tensor([token]))
            stepped.append(backbone(torch.tensor([[token]]), cache=cache,
                                    visible=None if keys is None else keys[:, None])[0, -1])
        stepped = torch.stack(stepped)  # (n, V)

        full_ids = ids[0].tolist() + answer
        runs = training_windows(caption_runs(tokenizer, full_ids, [False] * S + [True] * n), full_ids, group_times)
        visible = visibility([runs], S + n)
        full = torch.cat([embeds, backbone.model.embed_tokens(torch.tensor([answer]))], dim=1)
        trained_logits = backbone(inputs_embeds=full, visible=visible)[0, S:]
        plain_logits = backbone(inputs_embeds=full)[0, S:]

        # the reference: causal, minus what the windows hide; a query always sees itself
        allowed = torch.ones(S + n, S + n, dtype=torch.bool).tril() & (visible[0] | torch.eye(S + n, dtype=torch.bool))
        custom = torch.zeros(1, 1, S + n, S + n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        reference = Reference.from_pretrained(save_pretrained(backbone, tmp_path / "lm")).eval()
        reference_logits = reference(inputs_embeds=full, attention_mask=custom).logits[0, S:]

    assert sorted(math.isfinite(window[1]) for _, window in caption_runs(tokenizer, full_ids, [False] * S + [True] * n)) == [False] * 3 + [True] * 2
    assert (stepped - trained_logits).abs().max().item() <= 1e-4
    assert (reference_logits - trained_logits).abs().max().item() <= 1e-4
    windowed = torch.tensor([j - S for queries, _ in runs for j in queries])
    assert (trained_logits[windowed] - plain_logits[windowed]).abs().max().item() > 1e-2


def test_a_captioner_with_event_windows_captions_and_saves_the_option(tmp_path):
    from vcap.builder import load_captioner, save_captioner

    captioner = tiny_captioner(seed=4, event_windows=True,
                               frames=FramesConfig(num_frames=4, size=64, timestamps="text")).eval()
    video = np.random.default_rng(1).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    dense = captioner.caption(video, dense=True, lang="en", max_new_tokens=6)[0]
    assert dense.num_tokens == 6 and dense.events is not None
    save_captioner(captioner, tmp_path / "c")
    assert load_captioner(tmp_path / "c").config.event_windows is True


def test_a_dense_answer_ends_on_a_newline_that_sees_the_whole_video(tokenizer, tmp_path):
    """Whether another event follows is said on the token after a caption: a newline, the last
    event's too, which no window restricts (a caption's own last token sees only its event)."""
    from vcap.data import parse_sample, tokenize_sample
    from vcap.processor import VideoLayout

    record = {"video": "a.mp4", "lang": "en", "caption": "0:00.0 - 0:02.0: a up.\n0:02.0 - 0:04.0: b down.",
              "events": [{"start": 0.0, "end": 2.0, "caption": "a up."}, {"start": 2.0, "end": 4.0, "caption": "b down."}]}
    sample = parse_sample(record, tmp_path)
    ids, labels = tokenize_sample(tokenizer, sample, VideoLayout(4, (("<1.0 seconds>", 2), ("<3.0 seconds>", 2))))
    trained = [False] + [label != -100 for label in labels[:-1]]
    answer = [token for token, t in zip(ids, trained) if t]
    assert tokenizer.decode(answer).endswith("b down.\n<|im_end|>")
    runs = training_windows(caption_runs(tokenizer, ids, trained), ids, [1.0, 3.0])
    windowed = {j for queries, _ in runs for j in queries}
    line_ends = [j for j, t in enumerate(trained) if t and "\n" in tokenizer.decode([ids[j]])]
    assert len(line_ends) == 2 and not windowed & set(line_ends)
    assert all(labels[j - 1] != -100 for j in line_ends)  # both newlines are targets


def test_jitter_moves_the_captions_windows_and_keeps_them_ordered(tokenizer):
    ids, trained = _sample(tokenizer)
    runs = caption_runs(tokenizer, ids, trained)
    captions = [i for i, (_, window) in enumerate(runs) if math.isfinite(window[1])]
    pads = [j for j, t in enumerate(ids) if t == VIDEO_PAD_ID]
    exact = [set(hidden.tolist()) for _, hidden in training_windows(runs, ids, [0.5, 2.5, 4.5])]
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        moved = training_windows(runs, ids, [0.5, 2.5, 4.5], jitter=1.5, rng=rng)
        assert [list(q) for q, _ in moved] == [list(q) for q, _ in runs]  # the same queries
        seen |= {i for i, (_, hidden) in enumerate(moved) if set(hidden.tolist()) != exact[i]}
        assert all(set(hidden.tolist()) < set(pads) for _, hidden in moved)  # each still sees a frame
    assert seen == set(captions[:2])  # the times' windows stay; the last caption sees 4.5 however it moves


def test_event_time_queries_are_the_answer_s_targets_outside_captions(tokenizer):
    ids, trained = _sample(tokenizer, ANSWER + "\n")
    labels = [ids[j + 1] if trained[j + 1] else -100 for j in range(len(ids) - 1)] + [-100]
    runs = caption_runs(tokenizer, ids, trained)
    queries = event_time_queries(labels, runs)
    predicted = tokenizer.decode([labels[j] for j in queries])
    # the times of each line, each line's first digit, the colon after the times, and the end
    assert predicted == "0:00.0 - 0:02.3:0:02.3 - 0:04.1:0:04.1 - 0:06.0:<|im_end|>"


def test_dense_samples_carry_their_event_times_and_windows(tokenizer, tmp_path):
    from types import SimpleNamespace

    from vcap.data import CaptionDataset, DenseOptions, collate, parse_sample
    from vcap.processor import VideoLayout

    record = {"video": "a.mp4", "lang": "en", "caption": "0:00.0 - 0:02.0: a up.\n0:02.0 - 0:04.0: b down.",
              "events": [{"start": 0.0, "end": 2.0, "caption": "a up."}, {"start": 2.0, "end": 4.0, "caption": "b down."}]}
    single = {"video": "b.mp4", "lang": "en", "caption": "A red circle."}
    samples = [parse_sample(record, tmp_path), parse_sample(single, tmp_path)]
    cache = SimpleNamespace(times=lambda video: ([1.0, 3.0], 4.0), get=lambda video: None)
    for windows_on in (True, False):
        captioner = SimpleNamespace(
            tokenizer=tokenizer, config=SimpleNamespace(system_prompt=None, event_windows=windows_on),
            video_layout=lambda times, end: VideoLayout(4, (("<1.0 seconds>", 2), ("<3.0 seconds>", 2))),
            group_times=lambda times: list(times))
        data = CaptionDataset(samples, cache, captioner, DenseOptions(window_jitter=0.0))
        assert len(data.event_times[0]) > 10 and len(data.event_times[1]) == 0
        # 2 captions and 4 runs of times: the first end, the second start before and after its
        # last digit with the second end, and the answer's end
        assert (len(data.windows[0]) == 6) == windows_on and data.windows[1] == []
        batch = collate([data[0], data[1]], pad_id=0)
        assert batch["event_times"][0].sum() == len(data.event_times[0]) and not batch["event_times"][1].any()
        assert (batch["visible"] is not None) == windows_on


def test_loss_weights_weigh_only_the_event_times():
    from vcap.train import loss_weights

    batch = {"event_times": torch.tensor([[False, True, True], [False, False, False]])}
    assert loss_weights(batch, 1.0) is None
    assert loss_weights(batch, 3.0).tolist() == [[1.0, 3.0, 3.0], [1.0, 1.0, 1.0]]
    assert loss_weights({"event_times": None}, 3.0) is None
