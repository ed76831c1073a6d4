"""Data: splits (built-in sets in memory, image folders), class-stratified subsets, the DeiT augmentations, the
repeated-augmentation sampler, and loaders whose every batch is a pure function of (seed, epoch, batch index, rank).

One job per module: seeding (derived seeds), imagedata (the in-memory split), builtin (Fashion-MNIST, CIFAR), listing
(listing and checking an image folder), folder (decoding images, EncodedImage: decode only what a crop needs; a folder
in memory or streamed), datasets (names -> splits), subsets, augment (batch-wise), transforms (per-sample, timm's, up
to the uint8 crop), sampler, loader (in memory; make_loader), stream (a streamed folder's loader; normalise and erase
per batch), shards and shard_writer (WebDataset tar shards: read, packed), sample_log (DEIT_LOG_SAMPLES: the samples
each rank trained on)."""

from .augment import (AugmentConfig, apply_separable, augment_config, build_randaugment, crop_resize_matrices,
                      erase_box, erase_rectangles_, pad_random_crop, randaugment_batch, random_erase_,
                      random_resized_crop, random_resized_crop_boxes, shift_matrices)
from .builtin import (CACHE_DIR, CIFAR_STATS, FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, FASHION_MNIST_MEAN,
                      FASHION_MNIST_STD, FASHION_MNIST_SYSTEM_DIR, FASHION_MNIST_URL, IDX_IMAGES_MAGIC,
                      IDX_LABELS_MAGIC, read_idx)
from .datasets import SPLITS, describe, load_data, load_split
from .folder import (IMAGE_EXTENSIONS, IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_MEAN, IMAGENET_STD,
                     EncodedImage, FolderData, decode_image, image_files, read_images)
from .imagedata import ImageData
from .listing import BadImage, FileTable, FolderListing, check_image_file, list_split
from .loader import BatchLoader, default_num_workers, make_loader
from .sampler import RepeatAugSampler, ShardSampler
from .seeding import derive_seed, seeded_global_rng, seeded_rngs
from .shard_writer import write_shards
from .shards import ShardData, ShardIndex, scan_shard
from .stream import StreamLoader
from .subsets import stratified_subset

__all__ = [
    "AugmentConfig", "apply_separable", "augment_config", "build_randaugment", "crop_resize_matrices",
    "pad_random_crop", "randaugment_batch", "random_erase_", "random_resized_crop", "random_resized_crop_boxes",
    "shift_matrices", "CACHE_DIR", "CIFAR_STATS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES",
    "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_SYSTEM_DIR", "FASHION_MNIST_URL", "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC", "read_idx", "SPLITS", "describe", "load_data", "load_split", "IMAGE_EXTENSIONS",
    "IMAGENET_GRAY_MEAN", "IMAGENET_GRAY_STD", "IMAGENET_MEAN", "IMAGENET_STD", "image_files", "read_images",
    "ImageData", "BatchLoader", "RepeatAugSampler", "derive_seed", "seeded_global_rng", "stratified_subset",
    "FolderData", "decode_image", "BadImage", "FileTable", "FolderListing", "check_image_file", "list_split",
    "default_num_workers", "make_loader", "seeded_rngs", "StreamLoader", "ShardSampler", "write_shards", "ShardData",
    "ShardIndex", "scan_shard", "EncodedImage", "erase_box",
    "erase_rectangles_",
]
