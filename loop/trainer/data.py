"""Data for the trainer: the domain's splits as torch datasets, albumentations from YAML,
normalisation done on the device in batch (uint8 travels, float is made where the model is)."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from loop.domains import SampleSet
from loop.domains.pixels import PixelView, resize
from loop.errors import ConfigError
from loop.trainer.config import TransformSpec

# Normalisation and tensor conversion are the trainer's job (from the domain's statistics).
_REFUSED_TRANSFORMS = {"Normalize", "ToTensorV2", "ToFloat", "FromFloat"}


def build_augment(specs: list[TransformSpec], seed: int):
    """An albumentations Compose from YAML specs, or None when there are none."""
    if not specs:
        return None
    import albumentations as A

    transforms = []
    for i, spec in enumerate(specs):
        key = f"data.augment[{i}]"
        if spec.name in _REFUSED_TRANSFORMS:
            raise ConfigError(f"{key}.name: {spec.name} is applied by the trainer itself "
                              "(normalisation comes from the domain's statistics); remove it")
        cls = getattr(A, spec.name, None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise ConfigError(f"{key}.name: {spec.name!r} is not an albumentations transform")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                transforms.append(cls(**spec.args))
        except Exception as exc:  # albumentations raises TypeError/ValueError/pydantic errors
            raise ConfigError(f"{key}.args: {spec.name}: {exc}".splitlines()[0]) from None
        for w in caught:   # albumentations only warns about unknown arguments; here they are errors
            if "not valid" in str(w.message):
                raise ConfigError(f"{key}.args: {spec.name}: {w.message}")
    return A.Compose(transforms, seed=seed)


class ImageDataset(Dataset):
    """(uint8 CHW tensor, label, index) per sample, read from the domain's decoded pixels at
    `image_size` (in memory for array tasks, a memory-mapped cache for image files)."""

    def __init__(self, samples: SampleSet, image_size: int, augment=None):
        self.samples = samples
        self.size = image_size
        self.augment = augment
        self.labels = torch.as_tensor(samples.labels, dtype=torch.long)
        self.pixels: PixelView = samples.view(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> np.ndarray:
        return self.pixels.numpy(i)

    def __getitem__(self, i: int):
        img = self.image(i)
        if self.augment is not None:
            img = self.augment(image=img)["image"]
            if img.shape[0] != self.size or img.shape[1] != self.size:
                img = resize(img, self.size)
            if img.ndim == 2:
                img = img[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), self.labels[i], i

    def __getitems__(self, indices: list[int]):
        """A whole batch at once (torch's DataLoader calls this when it exists): one gather from the
        decoded pixels instead of per-sample tensors and a collate."""
        if self.augment is None:
            images = self.pixels[np.asarray(indices, dtype=np.int64)]
        else:
            images = torch.stack([self[i][0] for i in indices])
        index = torch.as_tensor(indices, dtype=torch.long)
        return images, self.labels[index], index

    def all_images(self) -> PixelView:
        """Every (unaugmented) image, sliced into uint8 NCHW tensors on demand (never one tensor)."""
        return self.pixels


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    aug = getattr(info.dataset, "augment", None)
    if aug is not None:  # each worker its own augmentation stream, derived from the epoch seed
        aug.set_random_seed((info.seed + worker_id) % 2**32)


def _batch_is_ready(batch):
    return batch    # ImageDataset.__getitems__ already returns a collated batch


def auto_workers(images: int, augmented: bool, threads: int) -> int:
    """Loader processes when the config leaves it open. Unaugmented batches are one gather from the
    decoded pixels, cheaper than a worker's hand-off; augmentation is per-image Python work that
    workers take off the training thread, worth a process start once an epoch is long."""
    if not augmented or images < 4096:
        return 0
    return max(1, min(4, threads // 2))


def train_loader(dataset: ImageDataset, order: list[int], batch_size: int, num_workers: int,
                 pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=num_workers,
                      drop_last=len(order) > batch_size, pin_memory=pin_memory, collate_fn=_batch_is_ready,
                      worker_init_fn=_seed_worker if num_workers else None)


class Normalizer:
    """uint8 NCHW batch -> normalised float on the device (channels_last when asked)."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)
