"""From `DatasetOptions` to the trainer's inputs: training clips and evaluation sequences.

Training reads shuffled, augmented clips through `deeplab2_vkmax.data.clip_reader`.
Evaluation reads whole sequences in frame order; `evaluation.evaluate.score_sequences`
cuts them into clips (`deeplab2_vkmax.data.clips`). The synthetic data set is
generated and converted to TFRecords on first use.
"""

import glob
import itertools
import os
from typing import Iterator, List, Tuple

import numpy as np
import tensorflow as tf

from deeplab2_vkmax.data import clip_reader
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax.protos import dataset_pb2


def resolve_file_patterns(options: dataset_pb2.DatasetOptions) -> List[str]:
  """The TFRecord patterns of `options` (environment variables expanded).

  Raises:
    ValueError: no file matches a pattern (the message names the pattern).
  """
  if options.dataset == 'synthetic' and not options.file_pattern:
    patterns = [synthetic.ensure_synthetic_records(options.synthetic, options.split)]
  else:
    patterns = [os.path.expandvars(p) for p in options.file_pattern]
  for pattern in patterns:
    if not glob.glob(pattern):
      raise ValueError(f'file_pattern "{pattern}" of dataset "{options.dataset}" matches no '
                       'file (is an environment variable in it unset?)')
  return patterns


def build_train_dataset(options: dataset_pb2.DatasetOptions,
                        descriptor: dataset_lib.DatasetDescriptor,
                        batch_size: int, num_shards: int = 1,
                        shard_index: int = 0) -> tf.data.Dataset:
  """Shuffled, augmented clip batches [B, T, H, W, ...] for training.

  `num_shards` > 1 keeps shard `shard_index` of the clips (one per input
  pipeline under multi-worker training; see `clip_reader.build_clip_dataset`).
  """
  augment = options.augmentations
  return clip_reader.build_clip_dataset(
      resolve_file_patterns(options),
      descriptor=descriptor,
      clip_length=options.clip_length,
      frame_stride=options.frame_stride,
      batch_size=batch_size,
      crop_size=tuple(options.crop_size),
      is_training=True,
      min_scale_factor=augment.min_scale_factor,
      max_scale_factor=augment.max_scale_factor,
      scale_factor_step_size=augment.scale_factor_step_size,
      flip=augment.flip,
      photometric=augment.photometric,
      max_thing_id=options.max_thing_id,
      shuffle_buffer=options.shuffle_buffer_size,
      seed=options.seed if options.HasField('seed') else None,
      deterministic=options.HasField('seed'),
      num_shards=num_shards,
      shard_index=shard_index)


def eval_sequences(options: dataset_pb2.DatasetOptions,
                   descriptor: dataset_lib.DatasetDescriptor,
                   max_num_sequences: int = -1
                   ) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
  """The evaluated sequences, whole and in order: (sequence id, uint8 images
  [F, H, W, 3], int32 labels [F, H, W]); at most `max_num_sequences` (-1 = all)."""
  sequences = clip_reader.read_sequences(resolve_file_patterns(options), descriptor)
  if max_num_sequences >= 0:
    sequences = itertools.islice(sequences, max_num_sequences)
  return sequences


def dataset_descriptor(options: dataset_pb2.DatasetOptions) -> dataset_lib.DatasetDescriptor:
  return dataset_lib.get_dataset_descriptor(options.dataset)
