"""A pooled token after the queries (smol's 9th visual token): what it computes, and that every consumer of the
visual tokens carries it — V, the query maps, backbone-parts files and stage B's optimizer — on the tiny backbone
with a pooled token attached, and smol's own PooledToken on random eye tokens."""
import dataclasses

import pytest
import torch
from torch import nn

from crome_edge.backbones.smol import EYE_CHANNELS, LLM_WIDTH, POSITION_CHANNELS, PooledToken


class MeanToken(nn.Module):
    """A stand-in pooled token for `tiny` (features (B, Np, 32) -> (B, 1, 64))."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(32, 64)

    def forward(self, features):
        return self.linear(features.mean(dim=1))[:, None]


@pytest.fixture
def pooled_tiny():
    from crome_edge.backbones.tiny import build_tiny

    backbone = build_tiny()  # a fresh one: the session's shared tiny must not change
    backbone.info = dataclasses.replace(backbone.info, num_query_tokens=backbone.info.num_query_tokens + 1)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        backbone.pooled_token = MeanToken()
    backbone.freeze()
    return backbone


def _eye_tokens(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 196, EYE_CHANNELS + POSITION_CHANNELS, generator=torch.Generator().manual_seed(1))


def test_smol_pooled_token_reads_the_eye_channels_wherever_they_are_and_ignores_the_positions():
    torch.manual_seed(0)
    token = PooledToken().eval()
    tokens = _eye_tokens()
    with torch.no_grad():
        out = token(tokens)
        shuffled = token(tokens[:, torch.randperm(196)])  # pooling: the order of positions does not matter
        moved = tokens.clone()
        moved[..., EYE_CHANNELS:] = torch.randn(2, 196, POSITION_CHANNELS)
        without_positions = token(moved)
        scaled = token(tokens * torch.cat([torch.full((EYE_CHANNELS,), 3.0), torch.ones(POSITION_CHANNELS)]))
        other = token(_eye_tokens(3)[2:])
    assert out.shape == (2, 1, LLM_WIDTH)
    assert torch.allclose(out, shuffled, atol=1e-5) and torch.equal(out, without_positions)
    assert torch.allclose(out, scaled, atol=1e-4)  # LayerNorm: a frame 3x brighter in every channel reads the same
    assert (out[0] - other[0]).abs().max() > 1e-2  # another frame, another token


def test_v_ends_with_the_pooled_token_and_its_map_is_uniform(pooled_tiny):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[5, 6, 7], [5, 6, 0]])
    with torch.no_grad():
        features = pooled_tiny.image_features(pixels)
        visual = pooled_tiny.encode_features(features, ids, (ids != 0).long())
        explained, maps = pooled_tiny.encode_image_explained(pixels, ids, (ids != 0).long())
    queries = pooled_tiny.query_tokens.shape[1]
    assert visual.shape == (2, queries + 1, 64)
    assert torch.equal(visual[:, -1:], pooled_tiny.pooled_token(features))
    assert torch.allclose(explained, visual, atol=1e-5)
    assert maps is not None and maps.shape == (2, queries + 1, 4, 4)
    patches = features.shape[1]  # a class token and 16 patches: the class token is no place in the image
    assert torch.allclose(maps[:, -1], torch.full((2, 4, 4), 1.0 / patches))
    assert not torch.allclose(maps[:, 0], maps[:, -1])  # the queries still look where they look


def test_parts_files_carry_the_pooled_token_and_a_file_without_it_is_refused(pooled_tiny, tmp_path):
    from crome_edge.backbones.parts_file import load_backbone_parts, save_backbone_parts
    from crome_edge.backbones.tiny import build_tiny
    from crome_edge.errors import CromeError

    save_backbone_parts(tmp_path / "with.safetensors", pooled_tiny)
    save_backbone_parts(tmp_path / "without.safetensors", build_tiny())
    target = build_tiny()
    target.pooled_token = MeanToken()  # another init
    load_backbone_parts(tmp_path / "with.safetensors", target)
    assert torch.equal(target.pooled_token.linear.weight, pooled_tiny.pooled_token.linear.weight)
    assert target.fingerprint() == pooled_tiny.fingerprint()
    with pytest.raises(CromeError, match=r"missing \['pooled_token.linear.bias', 'pooled_token.linear.weight'\]"):
        load_backbone_parts(tmp_path / "without.safetensors", target)
    with pytest.raises(CromeError, match=r"unexpected \['pooled_token.linear.bias', 'pooled_token.linear.weight'\]"):
        load_backbone_parts(tmp_path / "with.safetensors", build_tiny())


def test_stage_b_trains_the_pooled_token_at_the_projection_rate(pooled_tiny):
    from crome_edge.training.config import TrainConfig
    from crome_edge.training.stages import PretrainStage

    config = TrainConfig(data="unused", out="unused.safetensors", backbone="tiny", stage="pretrain", lr=1e-3)
    stage = PretrainStage(pooled_tiny, config, pixels=None, device=torch.device("cpu"))  # type: ignore[arg-type]
    groups = {g["name"]: g for g in stage.param_groups()}
    assert groups["pooled_token"]["lr"] == groups["projection"]["lr"] == 1e-3
    assert all(p.requires_grad for p in pooled_tiny.pooled_token.parameters())
    trained = {id(p) for g in groups.values() for p in g["params"]}
    assert trained == {id(p) for p in stage.trainable.parameters()}  # one group per trained module, nothing missed


def test_the_vision_graph_carries_the_pooled_token_with_a_numbered_token_axis(pooled_tiny, tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from crome_export.vision import export_vision
    from crome_runtime import formats

    path = tmp_path / "vision.onnx"
    export_vision(pooled_tiny, path, formats.DEFAULT_OPSET)
    tokens = pooled_tiny.query_tokens.shape[1] + 1
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
              for o in onnx.load(str(path)).graph.output}
    assert shapes[formats.OUT_VISUAL_EMBEDS][1:] == [tokens, 64]
    assert shapes[formats.OUT_QUERY_ATTENTION][1:] == [tokens, 4, 4]
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = torch.tensor([[5, 6, 7]])
    feeds = {formats.IN_PIXEL_VALUES: pixels.numpy(), formats.IN_INSTRUCTION_IDS: ids.numpy(),
             formats.IN_INSTRUCTION_MASK: np.ones_like(ids.numpy())}
    visual, maps = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        expected = pooled_tiny.encode_image(pixels, ids, torch.ones_like(ids))
    assert np.abs(visual - expected.numpy()).max() < 1e-4
    assert np.allclose(maps[0, -1], maps[0, -1, 0, 0])  # the pooled token's map: uniform
    pooled_tiny.info = dataclasses.replace(pooled_tiny.info, num_query_tokens=tokens - 1)  # info forgetting the token
    with pytest.raises(ValueError, match=f"declares {tokens - 1} visual tokens, its vision path makes {tokens}"):
        export_vision(pooled_tiny, tmp_path / "wrong.onnx", formats.DEFAULT_OPSET)


@pytest.mark.slow
def test_recipe_step_adds_a_seeded_pooled_token_to_an_8_query_parts_file_and_nothing_else(tmp_path):
    from crome_edge.backbones.parts_file import save_backbone_parts
    from crome_edge.backbones.smol import build_pooled_token, load_smol
    from crome_edge.errors import CromeError
    from crome_edge.recipes.smol_pooled_token import add_pooled_token

    shipped = load_smol()
    eight_queries = load_smol()
    eight_queries.pooled_token = None  # what smol was before the token
    save_backbone_parts(tmp_path / "old.safetensors", eight_queries)
    add_pooled_token(tmp_path / "old.safetensors", tmp_path / "new.safetensors", seed=0)
    grown = load_smol(tmp_path / "new.safetensors")
    for name, tensor in shipped.qformer.state_dict().items():
        assert torch.equal(grown.qformer.state_dict()[name], tensor)
    assert torch.equal(grown.projection.weight, shipped.projection.weight)
    assert torch.equal(grown.pooled_token.linear.weight, build_pooled_token(0).linear.weight)
    with pytest.raises(CromeError, match="not a smol parts file from before the pooled token"):
        add_pooled_token(tmp_path / "new.safetensors", tmp_path / "again.safetensors")
    from crome_edge.backbones.tiny import build_tiny

    save_backbone_parts(tmp_path / "tiny.safetensors", build_tiny())
    with pytest.raises(CromeError, match="trained against another LLM than smol's"):
        add_pooled_token(tmp_path / "tiny.safetensors", tmp_path / "from_tiny.safetensors")
    assert not (tmp_path / "again.safetensors").exists() and not (tmp_path / "from_tiny.safetensors").exists()
