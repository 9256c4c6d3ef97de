"""
What `TensorBatches` promises: normalised batches, an order and augmentation fixed by (seed, epoch,
batch), exact mid-epoch resumption, the paper's pad-crop-flip, disjoint shards per rank, and no Python
work per image.

Labels are set to `0..n-1` in most tests, so each label says which image a batch row came from.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch.utils.data import DistributedSampler

from experiments.loader import TensorBatches

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
N_IMAGES = 24


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(
        0, 256, (N_IMAGES, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )


def make(images: torch.Tensor, labels: torch.Tensor | None = None, **overrides) -> TensorBatches:
    arguments = dict(batch_size=8, shuffle=True, augment=True, device="cpu", seed=3, mean=MEAN, std=STD)
    arguments.update(overrides)
    return TensorBatches(images, torch.arange(len(images)) if labels is None else labels, **arguments)


def normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second, strict=True):
        assert torch.equal(images_a, images_b)
        assert torch.equal(labels_a, labels_b)


def test_batches_are_float_images_and_int64_labels_covering_the_set(images: torch.Tensor) -> None:
    batches = list(make(images, batch_size=10).epoch(0))
    assert [len(labels) for _, labels in batches] == [10, 10, 4]
    for batch_images, labels in batches:
        assert batch_images.dtype == torch.float32 and labels.dtype == torch.int64
        assert batch_images.shape == (len(labels), 3, 32, 32)
    assert sorted(torch.cat([labels for _, labels in batches]).tolist()) == list(range(N_IMAGES))


def test_length_and_images_per_epoch_follow_drop_last(images: torch.Tensor) -> None:
    keep = make(images, batch_size=10)
    drop = make(images, batch_size=10, drop_last=True)
    assert (len(keep), keep.images_per_epoch) == (3, 24)
    assert (len(drop), drop.images_per_epoch) == (2, 20)
    assert [len(labels) for _, labels in drop.epoch(0)] == [10, 10]


def test_without_augmentation_batches_are_the_normalised_originals(images: torch.Tensor) -> None:
    for batch_images, labels in make(images, augment=False).epoch(2):
        torch.testing.assert_close(batch_images, normalised(images[labels]))


def test_without_shuffling_batches_come_in_file_order(images: torch.Tensor) -> None:
    labels = torch.cat([labels for _, labels in make(images, shuffle=False, augment=False).epoch(5)])
    assert labels.tolist() == list(range(N_IMAGES))


def test_same_seed_and_epoch_give_identical_batches(images: torch.Tensor) -> None:
    assert_same_batches(list(make(images).epoch(4)), list(make(images).epoch(4)))


def test_different_epochs_differ_in_order_and_augmentation(images: torch.Tensor) -> None:
    loader = make(images)
    first, second = list(loader.epoch(0)), list(loader.epoch(1))
    assert not torch.equal(first[0][1], second[0][1])
    # Same images in the same order, so any difference is the augmentation's.
    fixed = make(images, shuffle=False)
    assert not torch.equal(next(fixed.epoch(0))[0], next(fixed.epoch(1))[0])


def test_different_seeds_differ(images: torch.Tensor) -> None:
    assert not torch.equal(next(make(images, seed=1).epoch(0))[1], next(make(images, seed=2).epoch(0))[1])


@pytest.mark.parametrize("start_batch", [0, 1, 2, 3])
def test_resuming_mid_epoch_gives_the_tail_of_the_uninterrupted_epoch(
    images: torch.Tensor, start_batch: int
) -> None:
    uninterrupted = list(make(images).epoch(7))
    # A fresh loader, as after a restart: nothing may depend on earlier epochs or batches.
    assert_same_batches(list(make(images).epoch(7, start_batch=start_batch)), uninterrupted[start_batch:])


def test_start_batch_beyond_the_epoch_is_refused(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="start_batch"):
        make(images).epoch(0, start_batch=4)


def window(
    image: torch.Tensor, top: int, left: int, flipped: bool, size: tuple[int, int] = (32, 32)
) -> torch.Tensor:
    """The paper's crop, written out by hand: zero-pad by 4, cut `size` at (top, left), maybe mirror."""
    channels, height, width = image.shape
    padded = torch.zeros(channels, height + 8, width + 8, dtype=torch.float32)
    padded[:, 4 : 4 + height, 4 : 4 + width] = image
    crop = padded[:, top : top + size[0], left : left + size[1]]
    return crop.flip(-1) if flipped else crop


def test_crop_is_a_window_of_the_zero_padded_image_and_flip_mirrors_it() -> None:
    # Channel 0 holds the row number + 1 and channel 1 the column number + 1, so every pixel is unique,
    # and only the padding is zero. With mean 0 and std 1/255 the loader hands out the raw pixel values.
    rows = torch.arange(1, 33, dtype=torch.uint8).view(32, 1).expand(32, 32)
    columns = torch.arange(1, 33, dtype=torch.uint8).view(1, 32).expand(32, 32)
    image = torch.stack([rows, columns, torch.full((32, 32), 200, dtype=torch.uint8)])
    copies = image.expand(64, 3, 32, 32).contiguous()
    loader = TensorBatches(
        copies,
        torch.zeros(64, dtype=torch.int64),
        batch_size=64,
        shuffle=False,
        augment=True,
        device="cpu",
        seed=0,
        mean=(0, 0, 0),
        std=(1 / 255,) * 3,
    )
    crops, _ = next(loader.epoch(0))

    seen = set()
    for crop in crops.round():
        matches = [
            (top, left, flipped)
            for top in range(9)
            for left in range(9)
            for flipped in (False, True)
            if torch.equal(crop, window(image, top, left, flipped))
        ]
        assert len(matches) == 1, "every output must be exactly one window of the padded image"
        seen.add(matches[0])
        # Independently of the reference: a mirrored crop reads column numbers right to left.
        middle_row = crop[1, 16]
        steps = middle_row[middle_row > 0].diff()
        assert (steps < 0).all() if matches[0][2] else (steps > 0).all()
    assert {flipped for _, _, flipped in seen} == {False, True}
    assert len({(top, left) for top, left, _ in seen}) > 10
    assert any((top, left) != (4, 4) for top, left, _ in seen), "some crops must reach into the padding"


def flipped_per_image(alternate: bool, epochs: int) -> torch.Tensor:
    """`[epochs, 64]`: whether each of 64 shuffled images came out mirrored in each epoch."""
    # Column numbers 1..32 in channel 0 show the direction; channel 1 holds the image's index.
    columns = torch.arange(1, 33, dtype=torch.uint8).view(1, 32).expand(32, 32)
    images = torch.stack([torch.stack([columns, torch.full((32, 32), i + 1, dtype=torch.uint8)])
                          for i in range(64)])  # fmt: skip
    loader = TensorBatches(images, torch.zeros(64, dtype=torch.int64), batch_size=16, shuffle=True,
                           augment=True, device="cpu", seed=3, mean=(0, 0), std=(1 / 255,) * 2,
                           alternate_flips=alternate)  # fmt: skip
    flipped = torch.zeros(epochs, 64, dtype=torch.bool)
    for epoch in range(epochs):
        for batch, _ in loader.epoch(epoch):
            for crop in batch.round():
                row = crop[0, 16][crop[0, 16] > 0]
                flipped[epoch, int(crop[1].max()) - 1] = bool((row.diff() < 0).all())
    return flipped


def test_alternating_flips_mirror_each_image_in_every_other_epoch() -> None:
    flipped = flipped_per_image(alternate=True, epochs=4)
    # Epoch 0 is a coin per image; each later epoch is exactly the opposite of the one before.
    assert 10 < int(flipped[0].sum()) < 54
    assert torch.equal(flipped[1:], ~flipped[:-1])
    # The default tosses a fresh coin each epoch: some image is mirrored (or not) twice in a row.
    random = flipped_per_image(alternate=False, epochs=4)
    assert (random[1:] == random[:-1]).any()


def test_small_crops_are_windows_of_the_padded_image_in_the_early_epochs_only() -> None:
    # Progressive image size: epochs before `small_crop_epochs` hand out 24x24 windows of the zero-padded
    # image (from any of 17x17 places), later epochs the paper's 32x32 ones, as the full-size loader does.
    rows = torch.arange(1, 33, dtype=torch.uint8).view(32, 1).expand(32, 32)
    columns = torch.arange(1, 33, dtype=torch.uint8).view(1, 32).expand(32, 32)
    image = torch.stack([rows, columns, torch.full((32, 32), 200, dtype=torch.uint8)])
    copies = image.expand(64, 3, 32, 32).contiguous()
    arguments = dict(batch_size=64, shuffle=False, augment=True, device="cpu", seed=0, mean=(0, 0, 0),
                     std=(1 / 255,) * 3)  # fmt: skip
    labels = torch.zeros(64, dtype=torch.int64)
    progressive = TensorBatches(copies, labels, small_crop=24, small_crop_epochs=2, **arguments)
    full = TensorBatches(copies, labels, **arguments)
    assert progressive.crop_size(1) == (24, 24) and progressive.crop_size(2) == (32, 32)
    crops, _ = next(progressive.epoch(1))
    assert crops.shape == (64, 3, 24, 24)
    padded = torch.zeros(3, 40, 40, dtype=torch.float32)
    padded[:, 4:36, 4:36] = image
    places = set()
    for crop in crops.round():
        windows = {
            (top, left, flipped): padded[:, top : top + 24, left : left + 24].flip(-1)
            if flipped
            else padded[:, top : top + 24, left : left + 24]
            for top in range(17)
            for left in range(17)
            for flipped in (False, True)
        }
        matches = [place for place, expected in windows.items() if torch.equal(crop, expected)]
        assert len(matches) == 1, "every output must be exactly one 24x24 window of the padded image"
        places.add(matches[0][:2])
    assert any(top > 8 or left > 8 for top, left in places), "small crops start beyond the full size's 9"
    # From `small_crop_epochs` on, the batches are the full-size loader's, draw for draw.
    assert_same_batches(list(progressive.epoch(2)), list(full.epoch(2)))
    # Resuming inside a small-crop epoch gives the tail of the uninterrupted epoch.
    smaller = TensorBatches(
        copies, labels, small_crop=24, small_crop_epochs=2, **{**arguments, "batch_size": 16}
    )
    assert_same_batches(list(smaller.epoch(0, start_batch=2)), list(smaller.epoch(0))[2:])


def test_small_crops_of_a_wide_image_start_anywhere_along_each_axis() -> None:
    # 16 rows by 32 columns, cropped to 16x16: 9 places down (as at full size) but 25 across, so each
    # axis must draw from its own range.
    rows = torch.arange(1, 17, dtype=torch.uint8).view(16, 1).expand(16, 32)
    columns = torch.arange(1, 33, dtype=torch.uint8).view(1, 32).expand(16, 32)
    image = torch.stack([rows, columns, torch.full((16, 32), 200, dtype=torch.uint8)])
    loader = TensorBatches(image.expand(64, 3, 16, 32).contiguous(), torch.zeros(64, dtype=torch.int64),
                           batch_size=64, shuffle=False, augment=True, device="cpu", seed=0, mean=(0, 0, 0),
                           std=(1 / 255,) * 3, small_crop=16, small_crop_epochs=1)  # fmt: skip
    crops, _ = next(loader.epoch(0))
    places = set()
    for crop in crops.round():
        matches = [
            (top, left)
            for top in range(9)
            for left in range(25)
            for flipped in (False, True)
            if torch.equal(crop, window(image, top, left, flipped, size=(16, 16)))
        ]
        assert len(matches) == 1, "every output must be exactly one 16x16 window of the padded image"
        places.add(matches[0])
    assert max(left for _, left in places) > 8, "crops must start beyond the height's range across"


@pytest.mark.parametrize("overrides", [dict(small_crop=33), dict(small_crop=-1), dict(small_crop_epochs=-1)])
def test_a_small_crop_outside_the_image_is_refused(images: torch.Tensor, overrides: dict) -> None:
    with pytest.raises(ValueError, match="small_crop must be in 0..32"):
        make(images, **overrides)


def test_world_size_two_gives_disjoint_shards_that_cover_the_set(images: torch.Tensor) -> None:
    shards = [
        torch.cat([labels for _, labels in make(images, rank=rank, world_size=2).epoch(3)]).tolist()
        for rank in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == N_IMAGES // 2
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(N_IMAGES))
    for rank in (0, 1):
        assert len(make(images, rank=rank, world_size=2)) == math.ceil(N_IMAGES / 2 / 8)


def test_shards_follow_distributed_sampler_order(images: torch.Tensor) -> None:
    # An uneven split: the sampler pads by repeating images so both ranks run the same number of steps.
    images = images[:23]
    for rank in (0, 1):
        sampler = DistributedSampler(range(23), num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(6)
        loaded = torch.cat([labels for _, labels in make(images, rank=rank, world_size=2).epoch(6)])
        assert loaded.tolist() == list(sampler)


def test_channels_last_changes_layout_not_values(images: torch.Tensor) -> None:
    plain = next(make(images).epoch(1))[0]
    channels_last = next(make(images, channels_last=True).epoch(1))[0]
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert not plain.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, channels_last)


def test_reduced_precision_output(images: torch.Tensor) -> None:
    batch = next(make(images, dtype=torch.bfloat16, channels_last=True).epoch(0))[0]
    assert batch.dtype == torch.bfloat16
    assert batch.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(mean=(0.5, 0.5)), "mean and std"),
        (dict(std=(0.2, 0.0, 0.2)), "std > 0"),
        (dict(dtype=torch.int32), "floating point"),
    ],
)
def test_bad_arguments_are_refused(images: torch.Tensor, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(images, **overrides)


def test_images_must_be_uint8_with_matching_labels(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="uint8"):
        make(images.float())
    with pytest.raises(ValueError, match="labels"):
        make(images, labels=torch.arange(N_IMAGES - 1))


def count_python_calls(loader: TensorBatches) -> int:
    """Python-level and C-level calls made while building the first batch of an epoch."""
    calls = 0

    def profile(frame, event, argument) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        next(loader.epoch(0))
    finally:
        sys.setprofile(None)
    return calls


def test_building_a_batch_costs_the_same_python_calls_at_any_batch_size() -> None:
    many = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    small = count_python_calls(make(many, batch_size=2))
    large = count_python_calls(make(many, batch_size=256))
    assert small == large, "the interpreter must not loop over the images of a batch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches(images: torch.Tensor) -> None:
    cpu = list(make(images).epoch(2))
    cuda = list(make(images, device="cuda").epoch(2))
    for (cpu_images, cpu_labels), (cuda_images, cuda_labels) in zip(cpu, cuda, strict=True):
        assert cuda_images.device.type == "cuda"
        torch.testing.assert_close(cuda_images.cpu(), cpu_images)
        assert torch.equal(cuda_labels.cpu(), cpu_labels)


# ## Cutout (not from the paper; the ResNet-9 recipe's regulariser)


def cut_region(plain: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """
    The `[H, W]` pixels that Cutout changed in one image, after checking it only ever sets whole pixels
    (every channel) to 0 and leaves the rest exactly as the loader without Cutout made them.
    """
    assert torch.all(plain != 0), "the comparison needs images without exact zeros"
    changed = (plain != cut).any(dim=0)
    assert torch.all(cut[:, changed] == 0)
    assert torch.equal(cut[:, ~changed], plain[:, ~changed])
    return changed


def rectangle_sides(region: torch.Tensor) -> tuple[int, int, bool, bool]:
    """(height, width, touches top/bottom, touches left/right) of a region that must be a rectangle."""
    rows = region.any(dim=1).nonzero().flatten()
    columns = region.any(dim=0).nonzero().flatten()
    assert len(rows) > 0, "every augmented image gets a square"
    top, bottom = rows.min().item(), rows.max().item()
    left, right = columns.min().item(), columns.max().item()
    rectangle = torch.zeros_like(region)
    rectangle[top : bottom + 1, left : right + 1] = True
    assert torch.equal(region, rectangle), "the blanked pixels must form one axis-aligned rectangle"
    height, width = region.shape
    return (
        bottom - top + 1,
        right - left + 1,
        top == 0 or bottom == height - 1,
        left == 0 or right == width - 1,
    )


def test_cutout_zero_gives_the_batches_of_a_loader_without_it(images: torch.Tensor) -> None:
    assert_same_batches(list(make(images, cutout=0).epoch(3)), list(make(images).epoch(3)))


@pytest.mark.parametrize("side", [1, 5, 8, 32])
def test_cutout_blanks_one_clipped_square_and_leaves_crops_and_flips_as_they_were(
    images: torch.Tensor, side: int
) -> None:
    full_squares = clipped_squares = 0
    for epoch in range(3):
        plain, cut = list(make(images).epoch(epoch)), list(make(images, cutout=side).epoch(epoch))
        assert len(plain) == len(cut)
        for (plain_images, plain_labels), (cut_images, cut_labels) in zip(plain, cut, strict=True):
            assert torch.equal(plain_labels, cut_labels)
            for plain_image, cut_image in zip(plain_images, cut_images, strict=True):
                height, width, clipped_rows, clipped_columns = rectangle_sides(
                    cut_region(plain_image, cut_image)
                )
                assert height <= side and width <= side
                # The centre lies in the image, so at least about half the square does in each direction.
                assert min(height, width) >= min(side - side // 2, side // 2 + 1)
                # Away from the edges the square is whole.
                assert clipped_rows or height == side
                assert clipped_columns or width == side
                if (height, width) == (side, side):
                    full_squares += 1
                else:
                    clipped_squares += 1
    # Both cases occur: the square is placed at random, not always inside or always over an edge.
    if side < 32:
        assert full_squares > 0
    assert clipped_squares > 0 or side == 1


def test_cutout_is_fixed_by_seed_epoch_and_batch_and_resumes_exactly(images: torch.Tensor) -> None:
    uninterrupted = list(make(images, cutout=8).epoch(5))
    assert_same_batches(list(make(images, cutout=8).epoch(5)), uninterrupted)
    for start_batch in (1, 2):
        assert_same_batches(
            list(make(images, cutout=8).epoch(5, start_batch=start_batch)), uninterrupted[start_batch:]
        )
    # Another seed moves the squares of the same (unshuffled) images.
    first = next(make(images, cutout=8, shuffle=False, seed=1).epoch(0))[0]
    second = next(make(images, cutout=8, shuffle=False, seed=2).epoch(0))[0]
    assert not torch.equal(first == 0, second == 0)


def test_cutout_is_not_applied_without_augmentation(images: torch.Tensor) -> None:
    for batch_images, labels in make(images, augment=False, cutout=8).epoch(1):
        torch.testing.assert_close(batch_images, normalised(images[labels]))
        assert torch.all(batch_images != 0)


def test_cutout_keeps_channels_last_and_reduced_precision(images: torch.Tensor) -> None:
    reference = list(make(images, cutout=8).epoch(0))
    for (batch, _), (expected, _) in zip(
        make(images, cutout=8, channels_last=True).epoch(0), reference, strict=True
    ):
        assert batch.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(batch, expected)
    for (batch, _), (expected, _) in zip(
        make(images, cutout=8, dtype=torch.bfloat16).epoch(0), reference, strict=True
    ):
        assert batch.dtype == torch.bfloat16
        assert torch.equal(batch == 0, expected == 0)


@pytest.mark.parametrize("cutout", [-1, 33, 100])
def test_a_cutout_outside_zero_to_the_image_size_is_refused(images: torch.Tensor, cutout: int) -> None:
    with pytest.raises(ValueError, match="cutout"):
        make(images, cutout=cutout)


def test_cutout_may_be_as_large_as_the_shorter_side() -> None:
    wide = torch.randint(1, 256, (4, 3, 24, 32), dtype=torch.uint8)
    assert next(make(wide, cutout=24).epoch(0))[0].shape == (4, 3, 24, 32)
    with pytest.raises(ValueError, match="cutout"):
        make(wide, cutout=25)


def test_cutout_costs_the_same_python_calls_at_any_batch_size() -> None:
    many = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    assert count_python_calls(make(many, batch_size=2, cutout=8)) == count_python_calls(
        make(many, batch_size=256, cutout=8)
    )
