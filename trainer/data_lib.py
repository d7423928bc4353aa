"""From `DatasetOptions` to tf.data pipelines: training clips and evaluation clips.

Training reads shuffled, augmented clips through `deeplab2_vkmax.data.clip_reader`.
Evaluation reads whole sequences in frame order and cuts them into clips that
advance by `clip_length - clip_overlap` frames (near-online: consecutive clips
share one frame, which video stitching matches on). The synthetic data set is
generated and converted to TFRecords on first use.
"""

import glob
import os
from typing import Iterator, List, Tuple

import numpy as np
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import build_step_data
from deeplab2_vkmax.data import clip_reader
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax.evaluation import video_scorer
from deeplab2_vkmax.protos import dataset_pb2

ORIGINAL_SIZE = common.ORIGINAL_SIZE


def _synthetic_file_pattern(options: dataset_pb2.DatasetOptions) -> str:
  """Generates (first use only) the synthetic set and its TFRecords."""
  params = options.synthetic
  frame_size = tuple(params.frame_size) or None
  root = synthetic.ensure_synthetic_dataset(
      params.root_dir, seed=params.seed,
      num_train_sequences=params.num_train_sequences,
      num_val_sequences=params.num_val_sequences,
      train_frames=params.train_frames_per_sequence,
      val_frames=params.val_frames_per_sequence,
      **({'height': frame_size[0], 'width': frame_size[1]} if frame_size else {}))
  record_dir = os.path.join(root, 'tfrecord')
  pattern = os.path.join(record_dir, f'{options.split}-*.tfrecord')
  if not glob.glob(pattern):
    build_step_data.convert_split(root, options.split, record_dir, num_shards=1,
                                  dataset_name='synthetic')
  return pattern


def resolve_file_patterns(options: dataset_pb2.DatasetOptions) -> List[str]:
  """The TFRecord patterns of `options` (environment variables expanded).

  Raises:
    ValueError: no file matches a pattern (the message names the pattern).
  """
  if options.dataset == 'synthetic' and not options.file_pattern:
    patterns = [_synthetic_file_pattern(options)]
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


def iterate_eval_clips(options: dataset_pb2.DatasetOptions,
                       descriptor: dataset_lib.DatasetDescriptor,
                       max_num_sequences: int = -1) -> Iterator[dict]:
  """Yields evaluation clips (unbatched numpy dicts), sequences in order.

  Frames are padded at the bottom/right to `crop_size` (image 127.5, the mean
  that normalises to 0; label void). Padding frames past a sequence's end
  repeat its last frame and carry frame id -1.
  """
  crop_height, crop_width = options.crop_size
  void = descriptor.ignore_label * descriptor.panoptic_label_divisor
  clip_length = options.clip_length
  sequences = clip_reader.read_sequences(resolve_file_patterns(options), descriptor)
  for index, (sequence_id, images, labels) in enumerate(sequences):
    if 0 <= max_num_sequences <= index:
      break
    num_frames, height, width = labels.shape
    if height > crop_height or width > crop_width:
      raise ValueError(f'sequence {sequence_id}: frames are {height}x{width}, larger than the '
                       f'eval crop_size {crop_height}x{crop_width}; raise crop_size')
    padded_images = np.full((num_frames, crop_height, crop_width, 3), 127.5, np.float32)
    padded_images[:, :height, :width] = images
    padded_labels = np.full((num_frames, crop_height, crop_width), void, np.int32)
    padded_labels[:, :height, :width] = labels
    for start in video_scorer.clip_starts(num_frames, clip_length, options.clip_overlap):
      frames = np.arange(start, start + clip_length)
      frame_ids = np.where(frames < num_frames, frames, -1).astype(np.int32)
      take = np.minimum(frames, num_frames - 1)
      yield {
          common.IMAGE: padded_images[take],
          common.PANOPTIC_LABEL: padded_labels[take],
          common.SEQUENCE_ID: sequence_id,
          common.FRAME_ID: frame_ids,
          ORIGINAL_SIZE: np.array([height, width], np.int32),
      }


def build_eval_dataset(options: dataset_pb2.DatasetOptions,
                       descriptor: dataset_lib.DatasetDescriptor,
                       max_num_sequences: int = -1) -> tf.data.Dataset:
  """Evaluation clips, batch size 1, in sequence and frame order."""
  crop_height, crop_width = options.crop_size
  clip_length = options.clip_length
  signature = {
      common.IMAGE: tf.TensorSpec([clip_length, crop_height, crop_width, 3], tf.float32),
      common.PANOPTIC_LABEL: tf.TensorSpec([clip_length, crop_height, crop_width], tf.int32),
      common.SEQUENCE_ID: tf.TensorSpec([], tf.string),
      common.FRAME_ID: tf.TensorSpec([clip_length], tf.int32),
      ORIGINAL_SIZE: tf.TensorSpec([2], tf.int32),
  }
  resolve_file_patterns(options)  # Fail early, naming the pattern.
  dataset = tf.data.Dataset.from_generator(
      lambda: iterate_eval_clips(options, descriptor, max_num_sequences),
      output_signature=signature)
  return dataset.batch(1).prefetch(2)


def dataset_descriptor(options: dataset_pb2.DatasetOptions) -> dataset_lib.DatasetDescriptor:
  return dataset_lib.get_dataset_descriptor(options.dataset)


def eval_clip_shape(options: dataset_pb2.DatasetOptions) -> Tuple[int, int, int]:
  return (options.clip_length, options.crop_size[0], options.crop_size[1])
