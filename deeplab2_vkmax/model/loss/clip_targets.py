"""Clip-level ground truth for the kMaX losses on tubes.

docs/loss.md: the T frames of a clip are stacked along
height exactly like the clip features (docs/model.md), a thing keeps one
panoptic id across the clip and therefore forms one mask (a *tube*), and each
stuff class present in the clip is one mask. Paper Sec. 3.1 (clip-kMaX): "each
object query ... is learned to yield a tube prediction".

Labels are downsampled to the model output by strided slicing
`label[:, :, ::output_stride, ::output_stride]` (so h = ceil(H / output_stride)),
the same nearest-neighbour choice DeepLab2 makes.

Void and crowd, as DeepLab2 (`model/loss/max_deeplab_loss.py`). Pixels whose
semantic class is `ignore_label` (or outside [0, num_classes)) are void. Thing
pixels with instance id 0 are *crowd*: they are NOT void (PIXEL_NON_VOID is 1
there) but belong to no ground-truth mask (their PIXEL_MASK_ONE_HOT row is all
zero). So crowd pixels count in the matching's predicted masks, in the void
ratio's denominator and in the instance-discrimination softmax, and drop out
only where DeepLab2 drops them: the dice loss and the mask-ID cross-entropy
(zero ground truth). The semantic loss keeps crowd pixels with their class.

All shapes are static except the batch; everything runs in `tf.function` and
under XLA (the slot-count check is an assertion, which XLA drops).
"""

from typing import Dict, Sequence

import tensorflow as tf

# Keys of the dictionary returned by `build_clip_targets`. They stay inside the
# loss package, so they are not part of `common`.
PIXEL_MASK_ID = 'pixel_mask_id'
PIXEL_NON_VOID = 'pixel_non_void'
PIXEL_IN_MASK = 'pixel_in_mask'
PIXEL_MASK_ONE_HOT = 'pixel_mask_one_hot'
PIXEL_INVERSE_MASK_AREA = 'pixel_inverse_mask_area'
MASK_CLASS = 'mask_class'
MASK_VALID = 'mask_valid'
MASK_AREA = 'mask_area'
NUM_MASKS = 'num_masks'
SEMANTIC_LABEL = 'semantic_label'
SEMANTIC_WEIGHT = 'semantic_weight'


def downsample_label(label: tf.Tensor, output_stride: int) -> tf.Tensor:
  """Nearest-neighbour downsampling by strided slicing.

  Args:
    label: A [B, T, H, W] tensor.
    output_stride: The model output stride.

  Returns:
    A [B, T, ceil(H / output_stride), ceil(W / output_stride)] tensor.
  """
  return label[:, :, ::output_stride, ::output_stride]


def strided_downsample(label: tf.Tensor, size) -> tf.Tensor:
  """Strided slicing to a static `size` (h, w), as DeepLab2's `strided_downsample`.

  The stride per axis is (H - 1) // (h - 1) (1 for h = 1), so a 32k + 1 label
  keeps its first and last rows: 65 -> 3 takes rows 0, 32, 64.

  Args:
    label: A [B, T, H, W] tensor (static H, W).
    size: (h, w).

  Returns:
    A [B, T, h, w] tensor.
  """
  height, width = label.shape[2], label.shape[3]
  strides = [max(1, (full - 1) // (small - 1)) if small > 1 else full
             for full, small in zip((height, width), size)]
  return label[:, :, ::strides[0], ::strides[1]][:, :, :size[0], :size[1]]


def _dense_rank(key: tf.Tensor) -> tf.Tensor:
  """Index of each entry's value among its row's distinct values, ascending.

  [R, P] integer keys -> [R, P] int32 in [0, distinct values of the row).
  Sort-based, so it has static shapes (no `tf.unique`) and runs under XLA.
  """
  order = tf.argsort(key, axis=1, stable=True)
  sorted_key = tf.gather(key, order, batch_dims=1)
  is_new = tf.concat([tf.ones_like(sorted_key[:, :1], tf.int32),
                      tf.cast(sorted_key[:, 1:] != sorted_key[:, :-1], tf.int32)],
                     axis=1)
  sorted_rank = tf.cumsum(is_new, axis=1) - 1
  return tf.gather(sorted_rank, tf.argsort(order, axis=1), batch_dims=1)


def _void_and_thing(semantic: tf.Tensor, *, num_classes: int, ignore_label: int,
                    thing_class_ids: Sequence[int]):
  """(is_void, is_thing) bool maps of a semantic map: void = the ignore label
  or a class outside [0, num_classes)."""
  is_void = tf.logical_or(tf.equal(semantic, ignore_label),
                          tf.logical_or(semantic < 0, semantic >= num_classes))
  thing_ids = tf.constant(list(thing_class_ids) or [-1], semantic.dtype)
  is_thing = tf.reduce_any(tf.equal(semantic[..., tf.newaxis], thing_ids), axis=-1)
  return is_void, is_thing


def _frame_segment_area(panoptic_label: tf.Tensor) -> tf.Tensor:
  """Pixels of each pixel's panoptic segment within its frame: [B, T, H, W] float32."""
  num_pixels = panoptic_label.shape[2] * panoptic_label.shape[3]
  segment = _dense_rank(tf.reshape(panoptic_label, [-1, num_pixels]))  # [F, HW]
  frames = tf.shape(segment)[0]
  segment += tf.range(frames)[:, tf.newaxis] * num_pixels  # Unique over frames.
  counts = tf.math.unsorted_segment_sum(
      tf.ones([frames * num_pixels], tf.float32), tf.reshape(segment, [-1]),
      frames * num_pixels)
  return tf.reshape(tf.gather(counts, segment), tf.shape(panoptic_label))


def semantic_targets(panoptic_label: tf.Tensor, size, *, num_classes: int,
                     ignore_label: int, label_divisor: int,
                     thing_class_ids: Sequence[int],
                     small_instance_area: int = 4096,
                     small_instance_weight: float = 1.0) -> Dict[str, tf.Tensor]:
  """Semantic label and per-pixel loss weight at the semantic logits' size.

  As DeepLab2's sample generator and loss: the weight is `small_instance_weight`
  on the pixels of non-crowd thing instances smaller than `small_instance_area`
  pixels (counted per frame at the label's resolution), 1 elsewhere; both maps
  are then strided to `size`.

  Args:
    panoptic_label: [B, T, H, W] at crop resolution.
    size: (h, w) of the semantic logits.
    num_classes, ignore_label, label_divisor, thing_class_ids: data set facts.
    small_instance_area, small_instance_weight: the small-instance rule
      (weight 1.0: off).

  Returns:
    {SEMANTIC_LABEL: int32 [B, T, h, w] (void = ignore_label),
     SEMANTIC_WEIGHT: float32 [B, T, h, w]}.
  """
  label = tf.cast(panoptic_label, tf.int32)
  semantic = label // label_divisor
  is_void, is_thing = _void_and_thing(semantic, num_classes=num_classes,
                                      ignore_label=ignore_label,
                                      thing_class_ids=thing_class_ids)
  semantic = tf.where(is_void, ignore_label, semantic)
  weight = tf.ones_like(label, tf.float32)
  if small_instance_weight != 1.0:
    instance = label % label_divisor
    small = (is_thing & (instance > 0) &
             (_frame_segment_area(label) < float(small_instance_area)))
    weight = tf.where(small, small_instance_weight, 1.0)
  return {SEMANTIC_LABEL: strided_downsample(semantic, size),
          SEMANTIC_WEIGHT: strided_downsample(weight, size)}


def build_clip_targets(panoptic_label: tf.Tensor,
                       *,
                       num_classes: int,
                       ignore_label: int,
                       label_divisor: int,
                       thing_class_ids: Sequence[int],
                       num_mask_slots: int,
                       output_stride: int = 4) -> Dict[str, tf.Tensor]:
  """Builds per-clip ground-truth masks (thing tubes + stuff classes).

  Mask order inside a clip follows the sorted panoptic id of the mask (stuff
  masks use `class * label_divisor`), so it is deterministic; the losses do not
  depend on it because the Hungarian matching picks the slot of every mask.

  Args:
    panoptic_label: A [B, T, H, W] integer tensor, semantic * label_divisor +
      instance, at crop resolution.
    num_classes: Number of thing + stuff classes C (void excluded); valid
      classes are 0..C-1.
    ignore_label: The semantic id of void pixels.
    label_divisor: The panoptic label divisor.
    thing_class_ids: Semantic ids of thing classes.
    num_mask_slots: Number of ground-truth mask slots M (= model mask slots).
    output_stride: Stride between the label and the model output.

  Returns:
    A dict with P = T * h * w pixels in (T, h, w) order, i.e. the frames stacked
    along height and flattened row-major:
      - PIXEL_MASK_ID: int32 [B, P], index of the pixel's GT mask, -1 if void
        or crowd.
      - PIXEL_NON_VOID: float32 [B, P], 1.0 unless the pixel is void (crowd
        pixels are non-void).
      - PIXEL_IN_MASK: float32 [B, P], 1.0 where PIXEL_MASK_ID >= 0.
      - PIXEL_MASK_ONE_HOT: float32 [B, P, M], one-hot of PIXEL_MASK_ID.
      - PIXEL_INVERSE_MASK_AREA: float32 [B, P], P / area of the pixel's mask
        (P / 1 for void and crowd pixels).
      - MASK_CLASS: int32 [B, M], semantic class of each mask, 0 for padding.
      - MASK_VALID: float32 [B, M], 1.0 for real masks, 0.0 for padding.
      - MASK_AREA: float32 [B, M], pixel count of each mask.
      - NUM_MASKS: int32 [B], number of real masks.

  Raises:
    InvalidArgumentError (at run time, not under XLA): when a clip has more
      ground-truth masks than `num_mask_slots`.
  """
  label = tf.cast(downsample_label(panoptic_label, output_stride), tf.int32)
  batch_size = label.shape[0] if label.shape[0] is not None else tf.shape(
      label)[0]
  _, clip_length, height, width = label.shape
  num_pixels = clip_length * height * width
  label = tf.reshape(label, [batch_size, num_pixels])  # [B, T*h*w]

  semantic = label // label_divisor
  instance = label % label_divisor
  is_void, is_thing = _void_and_thing(semantic, num_classes=num_classes,
                                      ignore_label=ignore_label,
                                      thing_class_ids=thing_class_ids)
  is_crowd = tf.logical_and(tf.logical_and(is_thing, tf.equal(instance, 0)),
                            tf.logical_not(is_void))
  in_mask = tf.logical_not(tf.logical_or(is_void, is_crowd))

  # One key per mask: the panoptic id for things (one tube across the clip),
  # class * divisor for stuff (instance ids on stuff are ignored).
  key = tf.where(is_thing, semantic * label_divisor + instance,
                 semantic * label_divisor)
  sentinel = tf.reduce_max(tf.abs(key)) + 1
  key = tf.where(in_mask, key, sentinel)  # Void sorts last.

  # Dense mask index = rank of the key among the clip's distinct keys.
  mask_id = tf.where(in_mask, _dense_rank(key), -1)  # [B, P]

  num_masks = tf.reduce_max(mask_id, axis=1) + 1  # [B]
  check = tf.debugging.assert_less_equal(
      num_masks, num_mask_slots,
      message=(f'A clip has more ground-truth masks (thing tubes + stuff '
               f'classes) than num_mask_slots={num_mask_slots}; the first '
               'tensor below is the per-clip mask count. Raise num_mask_slots.'),
      summarize=64)
  with tf.control_dependencies([check]):
    # Masks past the slot limit (only reachable under XLA, which drops the
    # assertion) become void rather than indexing out of range.
    mask_id = tf.where(mask_id < num_mask_slots, mask_id, -1)
  in_mask = tf.cast(mask_id >= 0, tf.float32)
  one_hot = tf.one_hot(mask_id, num_mask_slots, dtype=tf.float32)  # [B, P, M]
  mask_area = tf.reduce_sum(one_hot, axis=1)  # [B, M]
  mask_valid = tf.cast(mask_area > 0.0, tf.float32)
  # Every pixel of a mask carries its class, so a max over the mask works.
  mask_class = tf.reduce_max(
      one_hot * tf.cast(semantic[..., tf.newaxis], tf.float32), axis=1)
  mask_class = tf.cast(mask_class, tf.int32) * tf.cast(mask_valid, tf.int32)
  pixel_area = tf.einsum('bpm,bm->bp', one_hot, mask_area)
  inverse_area = float(num_pixels) / tf.maximum(pixel_area, 1.0)

  return {
      PIXEL_MASK_ID: mask_id,
      PIXEL_NON_VOID: 1.0 - tf.cast(is_void, tf.float32),
      PIXEL_IN_MASK: in_mask,
      PIXEL_MASK_ONE_HOT: one_hot,
      PIXEL_INVERSE_MASK_AREA: inverse_area,
      MASK_CLASS: mask_class,
      MASK_VALID: mask_valid,
      MASK_AREA: mask_area,
      NUM_MASKS: tf.minimum(num_masks, num_mask_slots),
  }
