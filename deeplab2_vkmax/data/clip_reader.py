"""tf.data pipeline that reads video clips from DeepLab2-format TFRecords.

A clip is `clip_length` frames of ONE sequence, `frame_stride` frames apart, in frame
order (Video-kMaX, Sec. 3: the model segments a clip of T frames at once). The
TFRecords (written by the `build_*_data` converters) hold every sequence
contiguously and in frame order inside one shard, so clips are formed by a sliding
window over each shard's records, keeping only windows whose frames share the
sequence id and whose frame ids step by exactly `frame_stride` (windows across a
sequence boundary are dropped).

Training draws ONE augmentation per clip and applies it identically to all T frames:
random scale (continuous in [min, max] or on the `scale_factor_step_size` grid),
padding to the crop size (image 127.5, label `ignore_label * label_divisor`, at the
bottom / right), a random crop, a horizontal flip and, optionally, photometric jitter
(brightness, contrast, saturation). Evaluation pads at the bottom / right and crops
the top-left `crop_size` window, without randomness. Per-clip randomness comes from
stateless ops seeded by `tf.data.Dataset.random(seed)`, so a fixed seed with
`deterministic=True` reproduces the stream exactly.

Sample dict of `build_clip_dataset` (keys in `deeplab2_vkmax.common`):
  IMAGE            float32 [B, T, crop_h, crop_w, 3] in [0, 255]
  PANOPTIC_LABEL   int32   [B, T, crop_h, crop_w], semantic * divisor + instance
  SEQUENCE_ID      string  [B]
  FRAME_ID         int32   [B, T]
"""

from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import dataset as dataset_lib

_PAD_IMAGE_VALUE = common.PAD_PIXEL_VALUE
# Photometric jitter ranges (one draw per clip).
_BRIGHTNESS_DELTA = 20.0
_CONTRAST_RANGE = (0.8, 1.2)
_SATURATION_RANGE = (0.8, 1.2)


def expand_file_pattern(file_pattern: Union[str, Sequence[str]]) -> List[str]:
  """Globs one pattern or a list of them into a sorted list of files.

  Raises:
    ValueError: If nothing matches; the message repeats the pattern(s).
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  files = set()
  for pattern in patterns:
    files.update(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f'No TFRecord file matches {patterns}.')
  return sorted(files)


def _parse_record(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Parses one frame without decoding: encoded bytes, ids (frame id as int32)."""
  spec = {
      common.KEY_ENCODED_IMAGE: tf.io.FixedLenFeature([], tf.string),
      common.KEY_ENCODED_LABEL: tf.io.FixedLenFeature([], tf.string, ''),
      common.KEY_SEQUENCE_ID: tf.io.FixedLenFeature([], tf.string, ''),
      common.KEY_FRAME_ID: tf.io.FixedLenFeature([], tf.string, ''),
  }
  parsed = tf.io.parse_single_example(serialized, spec)
  frame_id = parsed[common.KEY_FRAME_ID]
  # Image data sets have no frame id: frame 0 (they only form clips of T = 1).
  parsed[common.KEY_FRAME_ID] = tf.cond(
      tf.strings.length(frame_id) > 0,
      lambda: tf.strings.to_number(frame_id, tf.int32),
      lambda: tf.constant(0, tf.int32))
  return parsed


def _decode_frame(encoded_image: tf.Tensor, encoded_label: tf.Tensor,
                  sequence_id: tf.Tensor, frame_id: tf.Tensor,
                  void_label: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Decodes image uint8 [H, W, 3] and panoptic label int32 [H, W].

  A frame without label (test split) gets `void_label` everywhere.
  """
  image = tf.io.decode_image(encoded_image, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  size = tf.shape(image)[:2]

  def decode_label():
    flat = tf.io.decode_raw(encoded_label, tf.int32, little_endian=True)
    check = tf.debugging.Assert(
        tf.equal(tf.size(flat), size[0] * size[1]),
        ['Panoptic label size does not match the image size: sequence_id',
         sequence_id, 'frame_id', frame_id, 'label values', tf.size(flat),
         'image HxW', size])
    with tf.control_dependencies([check]):
      return tf.reshape(flat, size)

  label = tf.cond(tf.strings.length(encoded_label) > 0, decode_label,
                  lambda: tf.fill(size, tf.constant(void_label, tf.int32)))
  return image, label


def decode_example(serialized: tf.Tensor,
                   descriptor: dataset_lib.DatasetDescriptor) -> Dict[str, tf.Tensor]:
  """Decodes one serialized frame, exactly as the clip pipeline does.

  Args:
    serialized: Scalar string, a `tf.train.Example` from a `build_*_data` converter.
    descriptor: Data set descriptor (void label for label-less frames).

  Returns:
    {IMAGE: uint8 [H, W, 3], PANOPTIC_LABEL: int32 [H, W], SEQUENCE_ID: string [],
     FRAME_ID: int32 []}.
  """
  parsed = _parse_record(serialized)
  image, label = _decode_frame(
      parsed[common.KEY_ENCODED_IMAGE], parsed[common.KEY_ENCODED_LABEL],
      parsed[common.KEY_SEQUENCE_ID], parsed[common.KEY_FRAME_ID],
      descriptor.void_panoptic_label)
  return {common.IMAGE: image, common.PANOPTIC_LABEL: label,
          common.SEQUENCE_ID: parsed[common.KEY_SEQUENCE_ID],
          common.FRAME_ID: parsed[common.KEY_FRAME_ID]}


def _scale_grid(min_scale: float, max_scale: float, step: float) -> np.ndarray:
  if step <= 0:
    return np.array([], np.float32)
  count = int(np.floor((max_scale - min_scale) / step + 1e-4)) + 1
  return (min_scale + step * np.arange(count)).astype(np.float32)


def _pad_to(images: tf.Tensor, labels: tf.Tensor, height: int, width: int,
            void_label: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Pads [T, H, W, 3] / [T, H, W] at the bottom / right to at least height x width."""
  shape = tf.shape(labels)
  pad_h = tf.maximum(height - shape[1], 0)
  pad_w = tf.maximum(width - shape[2], 0)
  images = tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]],
                  constant_values=_PAD_IMAGE_VALUE)
  labels = tf.pad(labels, [[0, 0], [0, pad_h], [0, pad_w]],
                  constant_values=void_label)
  return images, labels


def _photometric(images: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast (about the clip mean) and saturation, same for all frames."""
  delta = tf.random.stateless_uniform([], seeds[0], -_BRIGHTNESS_DELTA,
                                      _BRIGHTNESS_DELTA)
  contrast = tf.random.stateless_uniform([], seeds[1], *_CONTRAST_RANGE)
  saturation = tf.random.stateless_uniform([], seeds[2], *_SATURATION_RANGE)
  images = images + delta
  mean = tf.reduce_mean(images, axis=[0, 1, 2], keepdims=True)
  images = (images - mean) * contrast + mean
  gray = tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1,
                       keepdims=True)
  images = (images - gray) * saturation + gray
  return tf.clip_by_value(images, 0.0, 255.0)


class _ClipProcessor:
  """Decodes and augments one clip; all settings fixed at construction."""

  def __init__(self, *, descriptor, clip_length, crop_size, is_training,
               min_scale_factor, max_scale_factor, scale_factor_step_size, flip,
               photometric, max_thing_id):
    self._descriptor = descriptor
    self._void_label = descriptor.void_panoptic_label
    self._clip_length = clip_length
    self._crop_h, self._crop_w = crop_size
    self._is_training = is_training
    self._min_scale = min_scale_factor
    self._max_scale = max_scale_factor
    self._scale_grid = _scale_grid(min_scale_factor, max_scale_factor,
                                   scale_factor_step_size)
    self._flip = flip
    self._photometric = photometric
    self._max_thing_id = max_thing_id

  def _random_scale(self, images, labels, seed):
    if self._min_scale == self._max_scale == 1.0:
      return images, labels
    if self._scale_grid.size:
      index = tf.random.stateless_uniform([], seed, 0, self._scale_grid.size,
                                          dtype=tf.int32)
      scale = tf.gather(tf.constant(self._scale_grid), index)
    elif self._min_scale == self._max_scale:
      scale = tf.constant(self._min_scale, tf.float32)
    else:
      scale = tf.random.stateless_uniform([], seed, self._min_scale,
                                          self._max_scale)
    size = tf.cast(tf.shape(labels)[1:3], tf.float32)
    new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
    images = tf.image.resize(images, new_size, method='bilinear')
    labels = tf.image.resize(labels[..., None], new_size,
                             method='nearest')[..., 0]
    return images, labels

  def __call__(self, clip: Dict[str, tf.Tensor],
               seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    sequence_id = clip[common.KEY_SEQUENCE_ID][0]
    frame_ids = clip[common.KEY_FRAME_ID]
    images, labels = [], []
    for t in range(self._clip_length):  # T is static: unrolled, decoded in parallel.
      image, label = _decode_frame(
          clip[common.KEY_ENCODED_IMAGE][t], clip[common.KEY_ENCODED_LABEL][t],
          sequence_id, frame_ids[t], self._void_label)
      images.append(image)
      labels.append(label)
    images = tf.cast(tf.stack(images), tf.float32)  # [T, H, W, 3]
    labels = tf.stack(labels)  # [T, H, W]

    if self._max_thing_id is not None:
      max_instance = tf.reduce_max(labels % self._descriptor.panoptic_label_divisor)
      check = tf.debugging.Assert(
          max_instance <= self._max_thing_id,
          [f'Instance id above max_thing_id={self._max_thing_id} in clip of '
           'sequence_id', sequence_id, 'frame_ids', frame_ids,
           'max instance id', max_instance])
      with tf.control_dependencies([check]):
        labels = tf.identity(labels)

    if self._is_training:
      seeds = tf.random.experimental.stateless_split(seed, num=7)
      images, labels = self._random_scale(images, labels, seeds[0])
      if self._photometric:
        images = _photometric(images, seeds[4:7])
      images, labels = _pad_to(images, labels, self._crop_h, self._crop_w,
                               self._void_label)
      shape = tf.shape(labels)
      offset_y = tf.random.stateless_uniform(
          [], seeds[1], 0, shape[1] - self._crop_h + 1, dtype=tf.int32)
      offset_x = tf.random.stateless_uniform(
          [], seeds[2], 0, shape[2] - self._crop_w + 1, dtype=tf.int32)
      images = images[:, offset_y:offset_y + self._crop_h,
                      offset_x:offset_x + self._crop_w]
      labels = labels[:, offset_y:offset_y + self._crop_h,
                      offset_x:offset_x + self._crop_w]
      if self._flip:
        do_flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
        images = tf.cond(do_flip, lambda: tf.reverse(images, [2]), lambda: images)
        labels = tf.cond(do_flip, lambda: tf.reverse(labels, [2]), lambda: labels)
    else:
      images, labels = _pad_to(images, labels, self._crop_h, self._crop_w,
                               self._void_label)
      images = images[:, :self._crop_h, :self._crop_w]
      labels = labels[:, :self._crop_h, :self._crop_w]

    images.set_shape([self._clip_length, self._crop_h, self._crop_w, 3])
    labels.set_shape([self._clip_length, self._crop_h, self._crop_w])
    frame_ids.set_shape([self._clip_length])
    return {
        common.IMAGE: images,
        common.PANOPTIC_LABEL: labels,
        common.SEQUENCE_ID: sequence_id,
        common.FRAME_ID: frame_ids,
    }


def _validate(clip_length, frame_stride, batch_size, crop_size, min_scale_factor,
              max_scale_factor, scale_factor_step_size, window_shift):
  for name, value in (('clip_length', clip_length), ('frame_stride', frame_stride),
                      ('batch_size', batch_size), ('window_shift', window_shift)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be a positive int, got {value!r}.')
  if (len(crop_size) != 2 or
      any(not isinstance(v, (int, np.integer)) or v < 1 for v in crop_size)):
    raise ValueError(f'crop_size must be (height, width) of positive ints, got '
                     f'{crop_size!r}.')
  if not 0 < min_scale_factor <= max_scale_factor:
    raise ValueError(f'Need 0 < min_scale_factor <= max_scale_factor, got '
                     f'{min_scale_factor} and {max_scale_factor}.')
  if scale_factor_step_size < 0:
    raise ValueError(f'scale_factor_step_size must be >= 0, got '
                     f'{scale_factor_step_size}.')


def build_clip_dataset(file_pattern: Union[str, Sequence[str]], *,
                       descriptor: dataset_lib.DatasetDescriptor,
                       clip_length: int,
                       frame_stride: int = 1,
                       batch_size: int,
                       crop_size: Tuple[int, int],
                       is_training: bool,
                       min_scale_factor: float = 1.0,
                       max_scale_factor: float = 1.0,
                       scale_factor_step_size: float = 0.0,
                       flip: bool = True,
                       photometric: bool = False,
                       max_thing_id: Optional[int] = None,
                       shuffle_buffer: int = 256,
                       seed: Optional[int] = None,
                       deterministic: bool = False,
                       drop_remainder: bool = True,
                       repeat: Optional[bool] = None,
                       window_shift: int = 1,
                       num_shards: int = 1,
                       shard_index: int = 0) -> tf.data.Dataset:
  """Builds the batched clip dataset (sample dict in the module docstring).

  Args:
    file_pattern: Glob pattern or list of patterns of TFRecord shards.
    descriptor: Data set descriptor (ignore label, label divisor).
    clip_length: Frames per clip, T.
    frame_stride: Distance in frames between consecutive clip frames.
    batch_size: Clips per batch (global batch; the strategy splits it).
    crop_size: (crop_h, crop_w) of the output.
    is_training: Augment, shuffle and (by default) repeat; else fixed pad/crop.
    min_scale_factor: Smallest random scale (training).
    max_scale_factor: Largest random scale (training).
    scale_factor_step_size: Grid step of the random scale; 0 = continuous.
    flip: Random horizontal flip (training).
    photometric: Random brightness / contrast / saturation (training).
    max_thing_id: If set, a clip with a larger instance id fails with an
      InvalidArgumentError that prints its sequence id and frame ids.
    shuffle_buffer: Clips in the shuffle buffer (training).
    seed: Seed of shuffling and augmentation; None = random.
    deterministic: Keep element order fixed despite parallel maps (tests,
      reproducible runs); False lets tf.data trade order for speed.
    drop_remainder: Drop the last partial batch (static batch dimension).
    repeat: Repeat forever; defaults to `is_training`.
    window_shift: Frames between the starts of consecutive candidate clips.
    num_shards: Input pipelines reading the data (multi-worker training); this
      one keeps shard `shard_index`: whole files when there are at least
      `num_shards` of them, else every `num_shards`-th clip (before decoding,
      in a fixed order).
    shard_index: Which shard, in [0, num_shards).

  Returns:
    A `tf.data.Dataset` of sample dicts.

  Raises:
    ValueError: For invalid arguments or a pattern matching no file.
  """
  _validate(clip_length, frame_stride, batch_size, crop_size, min_scale_factor,
            max_scale_factor, scale_factor_step_size, window_shift)
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'Need 0 <= shard_index < num_shards, got {shard_index} and '
                     f'{num_shards}.')
  files = expand_file_pattern(file_pattern)
  shard_files = len(files) >= num_shards
  if shard_files:
    files = files[shard_index::num_shards]
  crop_size = (int(crop_size[0]), int(crop_size[1]))
  repeat = is_training if repeat is None else repeat
  autotune = tf.data.AUTOTUNE

  def is_valid_clip(clip):
    sequence_ids = clip[common.KEY_SEQUENCE_ID]
    frame_ids = clip[common.KEY_FRAME_ID]
    same_sequence = tf.reduce_all(tf.equal(sequence_ids, sequence_ids[0]))
    consecutive = tf.reduce_all(
        tf.equal(frame_ids[1:] - frame_ids[:-1], frame_stride))
    return tf.logical_and(same_sequence, consecutive)

  def file_to_clips(path):
    records = tf.data.TFRecordDataset(path).map(_parse_record)
    windows = records.window(clip_length, shift=window_shift, stride=frame_stride,
                             drop_remainder=True)
    clips = windows.flat_map(
        lambda window: tf.data.Dataset.zip(window).batch(clip_length))
    return clips.filter(is_valid_clip)

  dataset = tf.data.Dataset.from_tensor_slices(files)
  if is_training:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  # Windows are formed inside each file: shards hold whole sequences.
  dataset = dataset.interleave(file_to_clips, cycle_length=min(len(files), 4),
                               block_length=1, num_parallel_calls=autotune,
                               deterministic=(deterministic or not is_training or
                                              not shard_files))
  if not shard_files:
    dataset = dataset.shard(num_shards, shard_index)
  if is_training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  seeds = tf.data.Dataset.random(seed=seed).batch(2)
  dataset = tf.data.Dataset.zip((dataset, seeds))
  processor = _ClipProcessor(
      descriptor=descriptor, clip_length=clip_length, crop_size=crop_size,
      is_training=is_training, min_scale_factor=float(min_scale_factor),
      max_scale_factor=float(max_scale_factor),
      scale_factor_step_size=float(scale_factor_step_size), flip=flip,
      photometric=photometric, max_thing_id=max_thing_id)
  dataset = dataset.map(processor, num_parallel_calls=autotune,
                        deterministic=deterministic or not is_training)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  dataset = dataset.prefetch(autotune)
  options = tf.data.Options()
  options.deterministic = bool(deterministic or not is_training)
  return dataset.with_options(options)


def read_sequences(
    file_pattern: Union[str, Sequence[str]],
    descriptor: dataset_lib.DatasetDescriptor
) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
  """Yields whole sequences in file and frame order, for sequence evaluation.

  Args:
    file_pattern: Glob pattern or list of patterns of TFRecord shards.
    descriptor: Data set descriptor (void label for label-less frames).

  Yields:
    (sequence_id, images uint8 [F, H, W, 3], labels int32 [F, H, W]).

  Raises:
    ValueError: If a sequence is split into non-contiguous runs of records or its
      frames are out of order (files not written by `build_step_data`).
  """
  files = expand_file_pattern(file_pattern)
  dataset = tf.data.TFRecordDataset(files).map(
      lambda s: decode_example(s, descriptor), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True).prefetch(tf.data.AUTOTUNE)
  finished = set()
  current, images, labels, last_frame = None, [], [], None
  for frame in dataset.as_numpy_iterator():
    sequence_id = frame[common.SEQUENCE_ID].decode()
    frame_id = int(frame[common.FRAME_ID])
    if sequence_id != current:
      if current is not None:
        finished.add(current)
        yield current, np.stack(images), np.stack(labels)
      if sequence_id in finished:
        raise ValueError(f'Sequence {sequence_id!r} appears in two separate runs of '
                         f'records in {files}; expected contiguous sequences.')
      current, images, labels, last_frame = sequence_id, [], [], None
    if last_frame is not None and frame_id <= last_frame:
      raise ValueError(f'Sequence {sequence_id!r}: frame {frame_id} follows frame '
                       f'{last_frame} in {files}; expected increasing frame ids.')
    last_frame = frame_id
    images.append(frame[common.IMAGE])
    labels.append(frame[common.PANOPTIC_LABEL])
  if current is not None:
    yield current, np.stack(images), np.stack(labels)
