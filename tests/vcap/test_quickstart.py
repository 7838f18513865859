"""The quickstart's wiring (the whole run takes minutes; `make quickstart` runs it)."""

from __future__ import annotations

from vcap.quickstart import STAGES, configs_dir, stage_config


def test_stage_configs_chain_under_the_output_folder(tmp_path):
    text_lm, projector, lora = (stage_config(configs_dir() / name, tmp_path) for name in STAGES)
    assert text_lm.data.text_only and text_lm.train.stage == "full"
    assert text_lm.model.language_model == "preset:mini"
    assert projector.train.stage == "projector" and lora.train.stage == "lora"
    for cfg in (projector, lora):  # later stages start from stage 0's language model
        assert cfg.model.language_model == text_lm.train.out_dir == str(tmp_path / "text_lm")
        assert cfg.data.train == str(tmp_path / "data" / "train.jsonl")
        assert cfg.data.feature_cache == str(tmp_path / "feature_cache")
    assert lora.train.init_from == projector.train.out_dir
    assert projector.model == lora.model  # the same encoder, projector type and frames in both stages
