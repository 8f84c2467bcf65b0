"""Spatial tiling: stitching geometry, opt-in API, and its combination with temporal chunking."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wfvae.models import build_model
from wfvae.models.base import _run_tiles, _tile_starts

ROOT = Path(__file__).parents[1]


def _model():
    torch.manual_seed(0)
    return build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").double().eval()


def _video(frames=9, height=48, width=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=g, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("size,tile,stride,expected", [(40, 16, 8, [0, 8, 16, 24]), (48, 16, 16, [0, 16, 32]), (8, 16, 8, [0])])
def test_tile_starts_cover_the_axis(size, tile, stride, expected):
    starts = _tile_starts(size, tile, stride)
    assert starts == expected
    assert starts[-1] + tile >= size


@pytest.mark.parametrize("scale", [1, 8, 1 / 8])
def test_stitching_reproduces_a_tile_local_operation(scale):
    # for an operation with no spatial context, tiles + blending must give back the whole result
    x = _video(height=48, width=64).float()
    if scale == 1:
        fn = lambda t: t * 2
    elif scale == 8:
        fn = lambda t: F.interpolate(t, scale_factor=(1, 8, 8), mode="nearest")
    else:
        fn = lambda t: F.avg_pool3d(t, (1, 8, 8))
    out = _run_tiles(fn, x, tile=32, stride=24, scale=scale)
    torch.testing.assert_close(out, fn(x), rtol=0, atol=1e-6)


def test_tiles_larger_than_the_frame_are_bit_exact():
    model, video = _model(), _video()
    with torch.no_grad():
        ref_moments = model.encode(video).moments
        ref_video = model.decode(ref_moments[:, : model.latent_channels])
        model.enable_tiling(tile_sample_min_size=64, overlap=0.25)
        moments = model.encode(video).moments
        decoded = model.decode(moments[:, : model.latent_channels])
    assert torch.equal(moments, ref_moments)
    assert torch.equal(decoded, ref_video)


def test_tiled_shapes_and_closeness():
    model, video = _model(), _video()
    with torch.no_grad():
        full = model.encode(video).moments
        z = full[:, : model.latent_channels]
        full_video = model.decode(z)
        model.enable_tiling(tile_sample_min_size=32, overlap=0.25)
        tiled = model.encode(video).moments
        tiled_video = model.decode(z)
    assert tiled.shape == full.shape and tiled_video.shape == full_video.shape
    assert torch.isfinite(tiled).all() and torch.isfinite(tiled_video).all()
    # random tiny weights: seams are not invisible, but the result stays near the untiled one
    assert (tiled_video - full_video).abs().mean() < 0.5 * full_video.abs().mean()


def test_tiling_combines_exactly_with_temporal_chunking():
    model, video = _model(), _video(frames=17)
    model.enable_tiling(tile_sample_min_size=32, overlap=0.25)
    with torch.no_grad():
        whole = model.encode(video).moments
        chunked = model.encode(video, chunk_size=4).moments
        z = whole[:, : model.latent_channels]
        decoded = model.decode(z)
        decoded_chunked = model.decode(z, chunk_size=2)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-8)
    torch.testing.assert_close(decoded_chunked, decoded, rtol=0, atol=1e-8)


def test_disable_tiling_restores_the_untiled_path():
    model, video = _model(), _video()
    with torch.no_grad():
        ref = model.encode(video).moments
        model.enable_tiling(tile_sample_min_size=32)
        model.disable_tiling()
        assert not model.use_tiling
        assert torch.equal(model.encode(video).moments, ref)


@pytest.mark.parametrize("kwargs", [{"tile_sample_min_size": 30}, {"tile_sample_min_size": 0}, {"overlap": 1.0}, {"overlap": -0.1}])
def test_enable_tiling_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        _model().enable_tiling(**kwargs)
