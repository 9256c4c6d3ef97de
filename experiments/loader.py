r"""
# Batches straight from a tensor on the training device

CIFAR-10 fits whole in memory (50,000 images of $3 \times 32 \times 32$ bytes, about 150 MB), so instead
of a `DataLoader` decoding one PIL image at a time, `TensorBatches` moves the `uint8` set to the device
once and builds every batch there with a handful of tensor operations, the same few calls for a batch
of 8 or of 1024 (a test counts them).

**Augmentation (§4.2):** "4 pixels are padded on each side, and a 32×32 crop is randomly sampled from
the padded image or its horizontal flip." The padding is black; crop and flip are one gather per batch.
Not from the paper and off unless `cutout` is set: *Cutout* (DeVries & Taylor, 2017) blanks a random
`cutout` × `cutout` square of each image after normalisation (so it takes the mean colour), centred
anywhere, so it may hang over an edge. Also off by default, *progressive image size*: the first
`small_crop_epochs` epochs train on random `small_crop` × `small_crop` crops of the padded image, which
cost about (small_crop / 32)² of a full image's arithmetic; the network, global-average-pooled, takes
any size, and the later full-size epochs let its batch-norm statistics settle on the size it is tested at.

**Everything is a pure function of (seed, epoch, batch):** the order comes from a `DistributedSampler`
seeded by `seed + epoch`, the crops and flips from a CPU generator seeded by a hash of (seed, epoch,
rank, batch). So a run stopped after batch $k$ resumes with `epoch(e, start_batch=k)` and sees exactly
the batches it would have seen, on CPU or GPU; with `world_size > 1` each rank takes the sampler's
disjoint slice, padded so every rank runs the same number of steps.
"""

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from labml.configs import option
from torch.utils.data import DistributedSampler

from experiments import data as cifar_data
from experiments.data import data_root
from experiments.distributed import World
from experiments.errors import UsageError
from experiments.options import RecordedOptions, Rule, at_least, within
from experiments.run_configs import RunConfigs
from resnet.pretrained import CIFAR10_MEAN, CIFAR10_STD

# §4.2: pad 4 pixels on each side before taking the random crop.
PAD = 4


@dataclass(eq=False, repr=False)
class TensorBatches:
    """
    Shuffled, augmented, normalised batches drawn from `uint8` `images` `[n, C, H, W]` and integer
    `labels` `[n]`, both kept on `device`.

    * `batch_size`: images per batch on this rank; `drop_last` skips a final smaller batch.
    * `shuffle`: a new random order every epoch (training), else file order (evaluation).
    * `augment`: §4.2's random crop of the 4-pixel-padded image and horizontal flip (training only).
    * `seed`: with the epoch and batch index, fixes the order and the augmentation.
    * `mean`, `std`: per-channel statistics on a 0..1 scale, e.g. `CIFAR10_MEAN` and `CIFAR10_STD`.
    * `rank`, `world_size`: this process's place among data-parallel processes.
    * `channels_last`: hand out batches in NHWC memory layout, which convolutions on recent GPUs prefer.
    * `dtype`: float type of the images handed out (`torch.float32`, or `bfloat16`/`float16`).
    * `cutout`: side of the square Cutout blanks in each augmented image; 0 (the default) is off.
    * `small_crop`, `small_crop_epochs`: the side of the random crops of epochs before
      `small_crop_epochs` (progressive image size); 0 (the default) crops at the image's own size.
    * `alternate_flips`: mirror each image in every other epoch, from a random first epoch, instead of
      tossing a fresh coin each epoch (off by default; not in the paper).
    """

    images: torch.Tensor
    labels: torch.Tensor
    _: KW_ONLY
    batch_size: int
    shuffle: bool
    augment: bool
    device: torch.device | str
    seed: int
    mean: Sequence[float]
    std: Sequence[float]
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False
    dtype: torch.dtype = torch.float32
    cutout: int = 0
    small_crop: int = 0
    small_crop_epochs: int = 0
    alternate_flips: bool = False

    def __post_init__(self) -> None:
        images, labels, size = self.images, self.labels, min(self.images.shape[2:], default=0)
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
            raise ValueError(f"images must be uint8 [n>0, C, H, W], got {images.dtype} {list(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be [{len(images)}] to match the images, got {list(labels.shape)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {self.rank} of {self.world_size}")
        if len(self.mean) != images.shape[1] or len(self.std) != images.shape[1] or min(self.std) <= 0:
            problem = f"got {self.mean} and {self.std}"
            raise ValueError(f"mean and std need {images.shape[1]} entries each and std > 0, {problem}")
        if not 0 <= self.cutout <= size:
            raise ValueError(f"cutout must be between 0 (off) and the image size {size}, got {self.cutout}")
        if not 0 <= self.small_crop <= size or self.small_crop_epochs < 0:
            problem = f"got {self.small_crop} and {self.small_crop_epochs}"
            raise ValueError(f"small_crop must be in 0..{size} and small_crop_epochs at least 0, {problem}")
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {self.dtype}")
        self.device = torch.device(self.device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        # $(x / 255 - \mu) / \sigma$ as one multiply and one subtract.
        std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) / std
        # The sampler only ever sees indices, so a `range` stands in for a data set.
        order = range(len(images))
        self._sampler = DistributedSampler(order, self.world_size, self.rank, self.shuffle, self.seed)
        # Alternating flips (Jordan, 2024, airbench): a coin per image decides epoch 0, and every later
        # epoch mirrors exactly the images the one before did not, so two epochs in a row never show an
        # image the same way round. The coins depend on the seed alone: every rank, and a resumed run,
        # draws the same ones.
        self._first_flips: torch.Tensor | None = None
        if self.alternate_flips:
            coins = torch.Generator().manual_seed(_stream(f"{self.seed}/flips"))
            self._first_flips = torch.randint(0, 2, (len(images),), generator=coins).to(self.device)

    @property
    def images_per_epoch(self) -> int:
        """Images this rank hands out per epoch (fewer than its share when `drop_last` drops a batch)."""
        return len(self) * self.batch_size if self.drop_last else self._sampler.num_samples

    def translate(self, images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
        """A batch moved `dx` right and `dy` down onto black: within `PAD`, a crop training could draw."""
        height, width = images.shape[2:]
        out = torch.empty_like(images)
        out.copy_((-self._shift).to(images.dtype).expand_as(images))
        out[:, :, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = images[
            :, :, max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
        ]
        return out

    def views(self, images: torch.Tensor, flip: bool, shift: int = 0) -> list[torch.Tensor]:
        """The batch, with `shift` also moved down-right and up-left, with `flip` each of those mirrored."""
        views = [images]
        if shift:
            views += [self.translate(images, shift, shift), self.translate(images, -shift, -shift)]
        if flip:
            views += [view.flip(3) for view in views]
        return views

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self._sampler.num_samples // self.batch_size
        return math.ceil(self._sampler.num_samples / self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`(images, labels)` of batches `start_batch, …` of `epoch`: images in `dtype`, labels `int64`."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in 0..{len(self)}, the epoch's batches; got {start_batch}")
        self._sampler.set_epoch(epoch)
        order = torch.tensor(list(self._sampler), dtype=torch.int64).to(self.device)
        return self._batches(epoch, order, start_batch)

    def _batches(
        self, epoch: int, order: torch.Tensor, start_batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in range(start_batch, len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = self.images[index]
            if self.augment:
                crop = self.crop_size(epoch)
                draws = self._random_draws(len(index), crop, epoch, batch)
                if self._first_flips is not None:  # the other draws stay as they were: only the coins change
                    draws[2] = self._first_flips[index] ^ (epoch % 2)
                images = self._crop_and_flip(images, draws, crop)
            images = images.to(torch.float32).mul_(self._scale).sub_(self._shift).to(self.dtype)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.augment and self.cutout:
                images = self._cut_out(images, draws)
            yield images, self.labels[index]

    def crop_size(self, epoch: int) -> tuple[int, int]:
        """The (height, width) of epoch `epoch`'s training crops: `small_crop` early on, else the image's."""
        if self.small_crop and epoch < self.small_crop_epochs:
            return self.small_crop, self.small_crop
        height, width = self.images.shape[2:]
        return height, width

    def _random_draws(self, n: int, size: tuple[int, int], epoch: int, batch: int) -> torch.Tensor:
        """
        A batch's crop offsets (rows 0, 1), flips (row 2) and Cutout centres (rows 3, 4, drawn last so
        that Cutout leaves the crops and flips as they were), copied to the device as one tensor.
        """
        # A hash rather than `seed + epoch + batch`, so that neighbouring (epoch, batch) pairs never share
        # a stream, e.g. epoch 1 batch 0 and epoch 0 batch 1.
        generator = torch.Generator().manual_seed(_stream(f"{self.seed}/{epoch}/{self.rank}/{batch}"))
        # A smaller crop has more places to start in the padded image; at full size, 2 * PAD + 1. One
        # draw per axis takes the same numbers from the stream as one draw of both would.
        rows = [
            torch.randint(0, 2 * PAD + 1 + side - crop, (1, n), generator=generator)
            for side, crop in zip(self.images.shape[2:], size, strict=True)
        ]
        rows.append(torch.randint(0, 2, (1, n), generator=generator))
        if self.cutout:
            rows += [torch.randint(0, side, (1, n), generator=generator) for side in size]
        return torch.cat(rows).to(self.device)

    def _crop_and_flip(
        self, images: torch.Tensor, draws: torch.Tensor, crop: tuple[int, int]
    ) -> torch.Tensor:
        """A random `crop` of the zero-padded batch, mirrored for a random half: one gather does both."""
        (n, channels), (height, width) = images.shape[:2], crop
        offsets, flip = draws[:2], draws[2].bool()
        padded = F.pad(images, (PAD, PAD, PAD, PAD))
        rows = offsets[0, :, None] + torch.arange(height, device=self.device)
        columns = torch.arange(width, device=self.device).expand(n, width)
        # A mirrored crop reads its columns right to left.
        columns = torch.where(flip[:, None], columns.flip(1), columns) + offsets[1, :, None]
        return padded[
            torch.arange(n, device=self.device)[:, None, None, None],
            torch.arange(channels, device=self.device)[None, :, None, None],
            rows[:, None, :, None],
            columns[:, None, None, :],
        ]

    def _cut_out(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Set a `cutout` × `cutout` square around each image's drawn centre to 0 (the mean colour)."""
        # Rows (and columns) from centre - cutout // 2 up to, not including, that plus `cutout`.
        top_left = draws[3:5] - self.cutout // 2
        rows = torch.arange(images.shape[2], device=self.device) - top_left[0, :, None]
        columns = torch.arange(images.shape[3], device=self.device) - top_left[1, :, None]
        in_rows = (rows >= 0) & (rows < self.cutout)
        in_columns = (columns >= 0) & (columns < self.cutout)
        return images.masked_fill_((in_rows[:, :, None] & in_columns[:, None, :])[:, None], 0)


def _stream(key: str) -> int:
    """A generator seed from a text key: a hash, so that similar keys never share a stream."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


# ## CIFAR-10 as a run's configuration: the settings and labml options behind a run's three loaders,
# extended by the training tutorial ([`cifar10.py`](cifar10.html)) as labml's `CIFAR10Configs` is.


# The paper's split for choosing settings: 45k images to train on, 5k held out (§4.2).
PAPER_VALID_SPLIT = 5_000


# `RecordedOptions` notes the names of the `@option`s registered here and in the tutorial's `Configs`, for
# the command line; listed after `RunConfigs`, the order stays valid if `RunConfigs` extends it too.
class CifarDataConfigs(RunConfigs, RecordedOptions):
    """The data of a run: which images, how they are batched (§4.2: 128 a step) and augmented."""

    # Where the official files are (or go, when downloaded), checked against their md5 sums unless
    # `verify_checksums` is off (only for a stand-in in CIFAR-10's format).
    data_dir: str
    # Download CIFAR-10 when it is not in `data_dir`.
    download: bool = True
    # Check every file's md5 sum before reading it.
    verify_checksums: bool = True
    # Training images held out to validate on, for choosing settings (the paper holds out 5,000).
    valid_split: int = 0
    # A class-balanced draw of this many training images for quick experiments; 0 means all.
    train_subset: int = 0
    # A class-balanced draw of this many test images; 0 means all.
    test_subset: int = 0
    # §4.2's random crops and flips of the training images.
    augment: bool = True
    # Side of the square Cutout blanks in each training image; 0 is off (the paper has no Cutout).
    cutout: int = 0
    # Progressive image size (not in the paper): the first `small_crop_epochs` epochs train on random
    # `small_crop` × `small_crop` crops, cheaper per image; 0 is off.
    small_crop: int = 0
    small_crop_epochs: int = 0
    # Mirror each training image in every other epoch instead of at random (airbench's alternating flip).
    alternate_flips: bool = False
    dataset: Any
    train_loader: TensorBatches
    valid_loader: TensorBatches | None
    test_loader: TensorBatches
    # The global batch: with several processes each takes `batch_size / world_size` images per step.
    batch_size: int = 128
    # Images per evaluation batch; the scores do not depend on it.
    eval_batch_size: int = 1000
    steps_per_epoch: int


# What each data setting may be, checked by the command line before anything is read. The sizes are the
# official set's, so no split or subset can ask for more images than there are.
DATA_RULES: dict[str, Rule] = {
    "valid_split": within(0, cifar_data.TRAIN_IMAGES),  # at least one image left to train on
    "train_subset": within(0, cifar_data.TRAIN_IMAGES, high_inclusive=True),
    "test_subset": within(0, cifar_data.TEST_IMAGES, high_inclusive=True),
    **dict.fromkeys(("batch_size", "eval_batch_size"), at_least(1)),
    "cutout": within(0, 32, high_inclusive=True),  # a larger square than the image blanks all of it
    # ResNet-20's last stage sees a quarter of the side: below 8 pixels it would see less than 2×2.
    "small_crop": lambda v: None if v == 0 or 8 <= v <= 32 else "must be 0 (off) or 8..32 pixels",
    "small_crop_epochs": at_least(0),
    "shift_tta": within(0, PAD, high_inclusive=True),  # training crops move an image at most PAD pixels
    "data_dir": lambda v: None if v else "must not be empty",
}


def check_data_settings(get: Callable[[str], Any]) -> None:
    """The data settings together (`get` reads a setting); raises `UsageError`."""
    if bool(get("small_crop")) != bool(get("small_crop_epochs")):
        raise UsageError(
            f"small_crop={get('small_crop')} small_crop_epochs={get('small_crop_epochs')}: progressive "
            "image size needs both, e.g. small_crop=24 small_crop_epochs=10 (or neither)"
        )
    left = cifar_data.TRAIN_IMAGES - get("valid_split")
    if get("train_subset") > left:
        raise UsageError(
            f"train_subset={get('train_subset')}: CIFAR-10 has only {left} training images after holding "
            f"out valid_split={get('valid_split')}; ask for at most {left}"
        )


@option(CifarDataConfigs.data_dir, "labml")
def _data_dir(c: CifarDataConfigs) -> str:
    return str(cifar_data.default_data_dir())


@option(CifarDataConfigs.dataset)
def _dataset(c: CifarDataConfigs) -> cifar_data.CifarArrays:
    return cifar_data.load_cifar10(c.data_dir, download=c.download, verify_checksums=c.verify_checksums)


def _loader(c: CifarDataConfigs, images: tuple[torch.Tensor, torch.Tensor], *, train: bool) -> TensorBatches:
    # Each rank trains on its share of every batch; every rank evaluates the whole set, so no sampler
    # padding repeats images in the metric.
    share = c.world if train else World()
    return TensorBatches(
        *images,
        batch_size=c.batch_size // share.size if train else c.eval_batch_size,
        shuffle=train,
        augment=train and c.augment,
        cutout=c.cutout if train else 0,
        small_crop=c.small_crop if train else 0,
        small_crop_epochs=c.small_crop_epochs if train else 0,
        alternate_flips=train and c.alternate_flips,
        device=c.device,
        seed=c.seed,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        rank=share.rank,
        world_size=share.size,
        channels_last=c.channels_last,
    )


@option([CifarDataConfigs.train_loader, CifarDataConfigs.valid_loader])
def _train_valid_loaders(c: CifarDataConfigs) -> tuple[TensorBatches, TensorBatches | None]:
    # The held-out images do not depend on `train_subset`: runs on subsets of any size validate alike.
    where = data_root(c.data_dir)
    images, labels = c.dataset.train_images, c.dataset.train_labels
    valid = None
    if c.valid_split >= len(images):
        problem = f"valid_split={c.valid_split} leaves no training images (the set has {len(images)})"
        raise cifar_data.DataError(where, problem, f"hold out fewer, e.g. --valid-split {len(images) // 10}")
    if c.valid_split:
        images, labels, valid_images, valid_labels = cifar_data.split_validation(
            images, labels, c.valid_split, c.seed
        )
        valid = _loader(c, (valid_images, valid_labels), train=False)
    train = cifar_data.subset(images, labels, c.train_subset, "train_subset", c.seed, where, c.valid_split)
    return _loader(c, train, train=True), valid


@option(CifarDataConfigs.test_loader)
def _test_loader(c: CifarDataConfigs) -> TensorBatches:
    d = c.dataset
    # A subset is drawn with another seed than the training subset's.
    where = data_root(c.data_dir)
    test = cifar_data.subset(d.test_images, d.test_labels, c.test_subset, "test_subset", c.seed + 1, where)
    return _loader(c, test, train=False)


@option(CifarDataConfigs.steps_per_epoch)
def _steps_per_epoch(c: CifarDataConfigs) -> int:
    return len(c.train_loader)
