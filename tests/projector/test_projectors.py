"""Projectors: the shared contract, each type against torch's own ops, the registry and I/O."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from projector import (
    PROJECTORS,
    LinearProjectorConfig,
    MLPProjectorConfig,
    PooledMLPProjectorConfig,
    build_projector,
    load_projector,
    projector_config_from_dict,
    save_projector,
)

CONFIGS = [
    LinearProjectorConfig(32, 48),
    MLPProjectorConfig(32, 48),
    PooledMLPProjectorConfig(32, 48, spatial_stride=2, temporal_stride=1),
    PooledMLPProjectorConfig(32, 48, spatial_stride=2, temporal_stride=2),
    PooledMLPProjectorConfig(32, 48, spatial_stride=3, temporal_stride=3),  # needs edge padding
    PooledMLPProjectorConfig(32, 48, spatial_stride=1, temporal_stride=4, temporal_merge="concat"),
    PooledMLPProjectorConfig(32, 48, spatial_stride=3, temporal_stride=3, temporal_merge="concat"),
    PooledMLPProjectorConfig(32, 48, spatial_stride=1, frame_difference="previous"),
    PooledMLPProjectorConfig(32, 48, spatial_stride=2, temporal_stride=2, frame_difference="both"),
    PooledMLPProjectorConfig(32, 48, spatial_stride=2, spatial_merge="concat", frame_difference="both"),
    PooledMLPProjectorConfig(32, 48, spatial_stride=3, temporal_stride=2, spatial_merge="concat",  # pads both ways
                             temporal_merge="concat"),
    PooledMLPProjectorConfig(32, 48, spatial_stride=1, neighbours="all", frame_difference="both"),
    PooledMLPProjectorConfig(32, 48, spatial_stride=2, neighbours="all", temporal_stride=2),
    PooledMLPProjectorConfig(32, 48, spatial_stride=1, neighbours="differences", frame_difference="previous"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{type(c).__name__}")
@pytest.mark.parametrize("T, P", [(8, 16), (5, 49), (1, 4)])
def test_contract_shapes(config, T, P):
    torch.manual_seed(0)
    projector = build_projector(config)
    out = projector(torch.randn(2, T, P, 32))
    assert out.shape == (2, projector.num_output_tokens(T, P), 48)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{type(c).__name__}")
@pytest.mark.parametrize("T, P", [(8, 16), (5, 49)])
def test_temporal_groups_say_which_tokens_come_from_which_frames(config, T, P):
    """The groups cover the frames in order, split the output evenly, and a group's tokens change
    when, and only when, its own frames change (or, with frame_difference, its neighbours')."""
    torch.manual_seed(0)
    projector = build_projector(config)
    groups = projector.temporal_groups(T)
    assert [t for g in groups for t in g] == list(range(T))
    N = projector.num_output_tokens(T, P)
    per = N // len(groups)
    assert per * len(groups) == N
    feats = torch.randn(1, T, P, 32)
    base = projector(feats)
    for k, frames in enumerate(groups):
        changed = feats.clone()
        changed[:, frames.start] += 1.0
        differs = (projector(changed) - base).abs().amax(dim=-1)[0] > 1e-6  # (N,)
        reach = getattr(config, "frame_difference", "none")  # which neighbours read group k's frames too
        first, last = max(k - (reach == "both"), 0), min(k + 1 + (reach != "none"), len(groups))
        assert differs[first * per : last * per].all() and differs.sum() == (last - first) * per, (k, frames)


def test_linear_and_mlp_are_the_documented_maps():
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 4, 32)
    linear = build_projector(LinearProjectorConfig(32, 48))
    expected = F.linear(feats.reshape(2, 12, 32), linear.proj.weight, linear.proj.bias)
    assert torch.allclose(linear(feats), expected)
    mlp = build_projector(MLPProjectorConfig(32, 48))
    first, second = mlp.mlp[0], mlp.mlp[2]
    hidden = F.gelu(F.linear(feats.reshape(2, 12, 32), first.weight, first.bias))
    assert torch.allclose(mlp(feats), F.linear(hidden, second.weight, second.bias))
    assert len(mlp.mlp) == 3  # Linear, GELU, Linear: LLaVA-1.5's mlp2x_gelu


def test_pooled_mlp_averages_patch_blocks_and_frame_pairs():
    torch.manual_seed(0)
    feats = torch.randn(1, 4, 16, 32)  # 4 frames of a 4x4 grid
    projector = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=2, temporal_stride=2))
    grid = feats.reshape(4, 4, 4, 32).permute(0, 3, 1, 2)  # (T, Dv, 4, 4)
    spatial = F.avg_pool2d(grid, 2)  # (T, Dv, 2, 2) per frame, by torch's 2-D pool
    pooled = (spatial[0::2] + spatial[1::2]) / 2  # frame pairs
    tokens = pooled.permute(0, 2, 3, 1).reshape(1, 8, 32)
    assert projector.num_output_tokens(4, 16) == 8
    assert torch.allclose(projector(feats), projector.mlp(tokens), atol=1e-6)


def test_pooled_mlp_concat_keeps_the_frames_in_order():
    torch.manual_seed(0)
    feats = torch.randn(1, 4, 16, 32)  # 4 frames of a 4x4 grid
    projector = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=2, temporal_stride=2,
                                                         temporal_merge="concat"))
    grid = feats.reshape(4, 4, 4, 32).permute(0, 3, 1, 2)
    spatial = F.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(4, 4, 32)  # (T, 4 blocks, Dv)
    tokens = torch.cat([torch.cat([spatial[t], spatial[t + 1]], dim=-1) for t in (0, 2)])  # (8, 2*Dv)
    assert projector.num_output_tokens(4, 16) == 8
    assert torch.allclose(projector(feats), projector.mlp(tokens[None]), atol=1e-6)
    reversed_in_time = projector(feats.flip(1))
    assert not torch.allclose(reversed_in_time, projector(feats)[:, [4, 5, 6, 7, 0, 1, 2, 3]], atol=1e-3)
    mean = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=2, temporal_stride=4))
    assert torch.allclose(mean(feats.flip(1)), mean(feats), atol=1e-6)  # averaging forgets the order


def test_pooled_mlp_spatial_concat_keeps_where_each_patch_was():
    """Qwen-VL's patch merger: a block's patches side by side (patch (i, j)'s feature c at c*s*s + i*s + j)."""
    torch.manual_seed(0)
    feats = torch.randn(1, 2, 16, 32)  # 2 frames of a 4x4 grid
    projector = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=2, spatial_merge="concat"))
    grid = feats.reshape(2, 4, 4, 32).permute(0, 3, 1, 2)  # (T, Dv, 4, 4)
    tokens = torch.stack([grid[t, :, 2 * bi:2 * bi + 2, 2 * bj:2 * bj + 2].reshape(32 * 4)
                          for t in range(2) for bi in range(2) for bj in range(2)])  # (T * 4 blocks, 4*Dv)
    assert projector.num_output_tokens(2, 16) == 8
    assert torch.allclose(projector(feats), projector.mlp(tokens[None]), atol=1e-6)
    mirrored = feats.reshape(1, 2, 4, 4, 32).flip(3).reshape(1, 2, 16, 32)  # left and right swapped
    block_mirrored = projector(mirrored)[:, [1, 0, 3, 2, 5, 4, 7, 6]]  # the blocks back in their places
    assert not torch.allclose(block_mirrored, projector(feats), atol=1e-3)  # a block's inside is not averaged away
    mean = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=2))
    assert torch.allclose(mean(mirrored)[:, [1, 0, 3, 2, 5, 4, 7, 6]], mean(feats), atol=1e-6)
    with pytest.raises(ValueError, match="spatial_merge must be"):
        PooledMLPProjectorConfig(32, 48, spatial_merge="max")


@pytest.mark.parametrize("reach", ["previous", "both"])
def test_pooled_mlp_frame_difference_reads_each_group_beside_its_change(reach):
    """[x_t, x_t - x_(t-1)] per token (and with "both", x_(t+1) - x_t), the differences past either
    end zero; a still video's groups then all read alike, and a cut shows in the group where it happens."""
    torch.manual_seed(0)
    feats = torch.randn(1, 3, 4, 32)  # 3 frames of a 2x2 grid
    projector = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=1, frame_difference=reach))
    x = feats[0]  # (T, P, Dv)
    parts = [x, x - torch.cat([x[:1], x[:-1]])] + ([torch.cat([x[1:], x[-1:]]) - x] if reach == "both" else [])
    tokens = torch.cat(parts, dim=-1).reshape(1, 12, 32 * len(parts))
    assert torch.allclose(projector(feats), projector.mlp(tokens), atol=1e-6)
    still = projector(feats[:, :1].expand(1, 3, 4, 32)).reshape(3, 4, 48)
    assert torch.allclose(still[1], still[0], atol=1e-6) and torch.allclose(still[2], still[0], atol=1e-6)
    cut = torch.cat([feats[:, :1], feats[:, 1:2], feats[:, 1:2]], dim=1)  # frame 0, then a new scene
    groups = projector(cut).reshape(3, 4, 48)
    assert not torch.allclose(groups[1], groups[2], atol=1e-3)  # the cut's group differs from the still one after it
    with pytest.raises(ValueError, match="frame_difference must be"):
        PooledMLPProjectorConfig(32, 48, frame_difference="next")


def test_pooled_mlp_neighbours_reads_the_3x3_window_around_each_token():
    """Token (i, j) reads patch (i + di, j + dj)'s feature c at c*9 + (di+1)*3 + (dj+1), zeros past the
    edge; a frame and its mirror image then no longer give the same tokens in another order."""
    torch.manual_seed(0)
    feats = torch.randn(1, 2, 9, 32)  # 2 frames of a 3x3 grid
    projector = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=1, neighbours="all"))

    def windows(x):  # (T, 9, Dv) -> (T*9, 9*Dv), by hand
        padded = F.pad(x.reshape(2, 3, 3, 32), (0, 0, 1, 1, 1, 1))  # (T, 5, 5, Dv): a ring of zeros
        return torch.stack([torch.stack([padded[t, i + di, j + dj] for di in range(3) for dj in range(3)], dim=-1)
                            .reshape(32 * 9) for t in range(2) for i in range(3) for j in range(3)])

    assert projector.num_output_tokens(2, 9) == 18
    assert torch.allclose(projector(feats), projector.mlp(windows(feats[0])[None]), atol=1e-6)
    moves = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=1, neighbours="differences",
                                                     frame_difference="previous"))
    x = feats[0]  # the token itself alone, its change from the previous frame with the 8 around it
    tokens = torch.cat([x.reshape(18, 32), windows(x - torch.cat([x[:1], x[:-1]]))], dim=-1)  # (T*P, Dv + 9*Dv)
    assert torch.allclose(moves(feats), moves.mlp(tokens[None]), atol=1e-6)
    mirror = [2, 1, 0, 5, 4, 3, 8, 7, 6]  # each row's patches right to left
    back = mirror + [9 + k for k in mirror]  # the mirrored video's tokens back in their places
    assert not torch.allclose(projector(feats[:, :, mirror])[:, back], projector(feats), atol=1e-3)
    alone = build_projector(PooledMLPProjectorConfig(32, 48, spatial_stride=1))
    assert torch.allclose(alone(feats[:, :, mirror])[:, back], alone(feats), atol=1e-6)
    with pytest.raises(ValueError, match="neighbours must be"):
        PooledMLPProjectorConfig(32, 48, neighbours="yes")
    with pytest.raises(ValueError, match="needs a frame_difference"):
        PooledMLPProjectorConfig(32, 48, neighbours="differences")


def test_pooled_mlp_refuses_a_non_square_grid():
    projector = build_projector(PooledMLPProjectorConfig(32, 48))
    with pytest.raises(ValueError, match="square patch grid"):
        projector.num_output_tokens(8, 50)  # 49 patches + a class token


def test_registry_lists_every_type_and_names_errors():
    assert set(PROJECTORS) == {"linear", "mlp2x_gelu", "pooled_mlp"}
    config = projector_config_from_dict({"type": "pooled_mlp", "vision_hidden_size": 8, "text_hidden_size": 4,
                                         "spatial_stride": 4})
    assert isinstance(config, PooledMLPProjectorConfig) and config.spatial_stride == 4
    assert config.spatial_merge == "mean" and config.neighbours == "none"  # a projector.json from before them reads as before
    with pytest.raises(ValueError, match="type must be one of"):
        projector_config_from_dict({"type": "qformer"})
    with pytest.raises(ValueError, match="unknown key 'stride'"):
        projector_config_from_dict({"type": "linear", "vision_hidden_size": 8, "text_hidden_size": 4, "stride": 2})
    with pytest.raises(ValueError, match="text_hidden_size must be a positive integer"):
        LinearProjectorConfig(8, 0)


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: type(c).__name__)
def test_save_and_load_round_trip(tmp_path, config):
    torch.manual_seed(0)
    projector = build_projector(config)
    save_projector(projector, tmp_path)
    assert (tmp_path / "projector.safetensors").exists() and (tmp_path / "projector.json").exists()
    loaded = load_projector(tmp_path)
    assert loaded.config == config
    feats = torch.randn(1, 2, 16, 32)
    assert torch.equal(loaded(feats), projector(feats))


def test_loading_weights_of_another_type_is_named(tmp_path):
    save_projector(build_projector(MLPProjectorConfig(32, 48)), tmp_path)
    (tmp_path / "projector.json").write_text('{"type": "linear", "vision_hidden_size": 32, "text_hidden_size": 48}')
    with pytest.raises(ValueError, match="weight"):
        load_projector(tmp_path)
