"""Shared learner units: Polyak averaging, random-shift augmentation, the action mapping, device config."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distracer.algos.augment import RandomShiftsAug
from distracer.algos.base import DeviceConfig
from distracer.algos.nets import polyak_update
from distracer.envs.wrappers import steer_accel_to_native
from distracer.errors import ConfigError

# ----- polyak_update -----


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_polyak_update_blends_parameters_and_copies_buffers():
    torch.manual_seed(0)
    source, target = _net(), _net()
    source[1].running_mean.fill_(0.5)
    source[1].num_batches_tracked.fill_(7)
    src_before = copy.deepcopy(source.state_dict())
    tgt_before = copy.deepcopy(target.state_dict())
    tau = 0.25
    polyak_update(source, target, tau)
    for (name, _), tp in zip(source.named_parameters(), target.parameters()):
        expected = tau * src_before[name] + (1 - tau) * tgt_before[name]
        torch.testing.assert_close(tp, expected, rtol=0, atol=1e-7)
    for b, tb in zip(source.buffers(), target.buffers()):
        assert torch.equal(b, tb)
    for name, value in source.state_dict().items():  # the source is left alone
        assert torch.equal(value, src_before[name]), name


def test_polyak_update_extremes():
    torch.manual_seed(1)
    source, target = _net(), _net()
    before = copy.deepcopy(target.state_dict())
    polyak_update(source, target, 0.0)
    for (name, p) in target.named_parameters():
        assert torch.equal(p, before[name])
    polyak_update(source, target, 1.0)
    for p, tp in zip(source.parameters(), target.parameters()):
        assert torch.equal(p, tp)


def test_polyak_update_converges_to_source():
    torch.manual_seed(2)
    source, target = _net(), _net()
    for _ in range(2000):
        polyak_update(source, target, 0.01)
    for p, tp in zip(source.parameters(), target.parameters()):
        torch.testing.assert_close(tp, p, rtol=0, atol=1e-5)  # lerp rounding floor


# ----- RandomShiftsAug -----


def _dot_images(n: int, size: int, channels: int = 2, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """n identical images, zero except one bright pixel at the centre of every channel."""
    x = torch.zeros(n, channels, size, size, dtype=dtype)
    x[:, :, size // 2, size // 2] = 255
    return x


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("pad", [1, 4])
def test_random_shift_stays_within_pad_and_covers_every_shift(dtype, pad):
    size, n = 24, 400
    x = _dot_images(n, size, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    out = RandomShiftsAug(pad)(x, generator)
    assert out.shape == x.shape and out.dtype == dtype
    centre = size // 2
    dys, dxs = [], []
    for img in out:
        assert torch.equal(img[0], img[1])  # one shift per image, shared by its channels (frame stack)
        # Integer shifts at pixel centres: the dot moves whole, with its value intact.
        ys, xs = torch.nonzero(img[0], as_tuple=True)
        assert len(ys) == 1 and img[0, ys[0], xs[0]] == 255
        dys.append(int(ys[0]) - centre)
        dxs.append(int(xs[0]) - centre)
    allowed = set(range(-pad, pad + 1))
    assert set(dys) == allowed and set(dxs) == allowed
    assert len(set(zip(dys, dxs))) > (2 * pad + 1) ** 2 // 2  # independent axes, not one shared shift


def _drqv2_grid_sample_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-v2's original RandomShiftsAug (replicate pad + grid_sample), the reference the gather version matches."""
    n, _, h, _ = x.shape
    dtype = x.dtype
    x = F.pad(x.float(), (pad,) * 4, mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad)[:h]
    arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    base_grid = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
    shift = torch.randint(0, 2 * pad + 1, size=(n, 1, 1, 2), generator=generator).to(base_grid.dtype)
    shift *= 2.0 / (h + 2 * pad)
    out = F.grid_sample(x, base_grid + shift, padding_mode="zeros", align_corners=False)
    return out.round().to(dtype)


def test_random_shift_matches_drqv2_reference():
    x = torch.randint(0, 256, (64, 4, 36, 36), dtype=torch.uint8)
    ours = RandomShiftsAug(4)(x, torch.Generator().manual_seed(5))
    reference = _drqv2_grid_sample_shift(x, 4, torch.Generator().manual_seed(5))
    assert torch.equal(ours, reference)
    # Float input: exact integer shifts of the same images (grid_sample is off by up to ~4e-3 on 0..255 floats).
    ours_float = RandomShiftsAug(4)(x.float(), torch.Generator().manual_seed(5))
    assert ours_float.dtype == torch.float32 and torch.equal(ours_float, ours.float())


def test_random_shift_is_reproducible_per_generator_and_independent_per_image():
    x = _dot_images(64, 20)
    aug = RandomShiftsAug(4)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({img.numpy().tobytes() for img in a}) > 1  # images in a batch get different shifts


def test_random_shift_replicates_edges():
    """A constant image stays constant (the padding repeats the border, never shows zeros)."""
    x = torch.full((16, 4, 20, 20), 77, dtype=torch.uint8)
    out = RandomShiftsAug(4)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_random_shift_pad_zero_is_identity_and_negative_refused():
    x = _dot_images(3, 12)
    assert RandomShiftsAug(0)(x) is x
    with pytest.raises(ValueError):
        RandomShiftsAug(-1)


# ----- steer_accel_to_native -----


@pytest.mark.parametrize(
    "action,native",
    [
        ([0.0, 0.0], [0.0, 0.0, 0.0]),
        ([-0.5, 0.7], [-0.5, 0.7, 0.0]),   # accelerate: gas only
        ([0.3, -0.4], [0.3, 0.0, 0.4]),    # brake only, never both
        ([1.0, 1.0], [1.0, 1.0, 0.0]),
        ([-1.0, -1.0], [-1.0, 0.0, 1.0]),
        ([-3.0, 2.5], [-1.0, 1.0, 0.0]),   # out of range: clipped
        ([5.0, -9.0], [1.0, 0.0, 1.0]),
    ],
)
def test_steer_accel_to_native(action, native):
    out = steer_accel_to_native(np.asarray(action, np.float32))
    assert out.shape == (3,) and out.dtype == np.float32
    np.testing.assert_allclose(out, native, rtol=0, atol=1e-7)


def test_steer_accel_to_native_batched_and_never_gas_with_brake():
    actions = np.random.default_rng(0).uniform(-2, 2, (1000, 2))
    out = steer_accel_to_native(actions)
    assert out.shape == (1000, 3) and out.dtype == np.float32
    assert np.all((out[:, 1] == 0) | (out[:, 2] == 0))
    assert np.all(out[:, 0] >= -1) and np.all(out[:, 0] <= 1)
    assert np.all((out[:, 1:] >= 0) & (out[:, 1:] <= 1))


# ----- DeviceConfig -----


@pytest.mark.parametrize(
    "device,precision,match",
    [
        ("cpu", "fp64", "precision"),
        ("cpu", "half", "precision"),
        ("tpu", "fp32", "device"),
        ("gpu", "fp32", "device"),
        ("", "fp32", "device"),
    ],
)
def test_device_config_refuses_unknown_values(device, precision, match):
    with pytest.raises(ConfigError, match=match):
        DeviceConfig(device, precision).validate()


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_device_config_refuses_cuda_without_gpu(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = DeviceConfig(device)
    config.validate()  # the config itself is fine: the learner may run on another node
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        config.check_available()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_device_config_cpu_is_full_precision(monkeypatch, precision):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = DeviceConfig("auto", precision)
    config.validate()
    assert config.torch_device() == torch.device("cpu")
    assert config.amp_dtype() is None  # mixed precision is CUDA-only
