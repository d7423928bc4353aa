"""Clip-level ground truth for the kMaX losses on tubes.

method.md §2 ("Ground truth per clip"): the T frames of a clip are stacked along
height exactly like the clip features (method.md §1.3), a thing keeps one
panoptic id across the clip and therefore forms one mask (a *tube*), and each
stuff class present in the clip is one mask. Paper Sec. 3.1 (clip-kMaX): "each
object query ... is learned to yield a tube prediction".

Labels are downsampled to the model output by strided slicing
`label[:, :, ::output_stride, ::output_stride]` (so h = ceil(H / output_stride)),
the same nearest-neighbour choice DeepLab2 makes.

Void and crowd. Pixels whose semantic class is `ignore_label` (or outside
[0, num_classes)) are void. Thing pixels with instance id 0 are *crowd*: they
belong to no ground-truth mask and are treated as void by every mask-level loss
(PQ-style, mask-ID cross-entropy, instance discrimination, and the void ratio of
the PQ-style class term), as DeepLab2 does by leaving them out of every mask. We
go one step further than DeepLab2 and also drop them from the predicted masks in
the dice terms (DeepLab2 only drops `ignore_label` pixels there), so predicting a
crowd region is neither rewarded nor penalised. The semantic loss keeps crowd
pixels with their class.

All shapes are static except the batch; everything runs in `tf.function` and
under XLA (the slot-count check is an assertion, which XLA drops).
"""

from typing import Dict, Sequence

import tensorflow as tf

# Keys of the dictionary returned by `build_clip_targets`. They stay inside the
# loss package, so they are not part of `common`.
PIXEL_MASK_ID = 'pixel_mask_id'
PIXEL_NON_VOID = 'pixel_non_void'
PIXEL_MASK_ONE_HOT = 'pixel_mask_one_hot'
PIXEL_INVERSE_MASK_AREA = 'pixel_inverse_mask_area'
MASK_CLASS = 'mask_class'
MASK_VALID = 'mask_valid'
MASK_AREA = 'mask_area'
NUM_MASKS = 'num_masks'
SEMANTIC_LABEL = 'semantic_label'


def downsample_label(label: tf.Tensor, output_stride: int) -> tf.Tensor:
  """Nearest-neighbour downsampling by strided slicing.

  Args:
    label: A [B, T, H, W] tensor.
    output_stride: The model output stride.

  Returns:
    A [B, T, ceil(H / output_stride), ceil(W / output_stride)] tensor.
  """
  return label[:, :, ::output_stride, ::output_stride]


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
      - PIXEL_NON_VOID: float32 [B, P], 1.0 where PIXEL_MASK_ID >= 0.
      - PIXEL_MASK_ONE_HOT: float32 [B, P, M], one-hot of PIXEL_MASK_ID.
      - PIXEL_INVERSE_MASK_AREA: float32 [B, P], P / area of the pixel's mask
        (P / 1 for void pixels).
      - MASK_CLASS: int32 [B, M], semantic class of each mask, 0 for padding.
      - MASK_VALID: float32 [B, M], 1.0 for real masks, 0.0 for padding.
      - MASK_AREA: float32 [B, M], pixel count of each mask.
      - NUM_MASKS: int32 [B], number of real masks.
      - SEMANTIC_LABEL: int32 [B, T, h, w], downsampled semantic label with
        void (including out-of-range classes) set to `ignore_label`; crowd
        pixels keep their class.

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
  in_range = tf.logical_and(semantic >= 0, semantic < num_classes)
  is_void = tf.logical_or(tf.equal(semantic, ignore_label),
                          tf.logical_not(in_range))
  thing_ids = tf.constant(list(thing_class_ids) or [-1], tf.int32)
  is_thing = tf.reduce_any(
      tf.equal(semantic[..., tf.newaxis], thing_ids), axis=-1)
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
  order = tf.argsort(key, axis=1, stable=True)  # [B, P]
  sorted_key = tf.gather(key, order, batch_dims=1)
  is_new = tf.concat([
      tf.ones([batch_size, 1], tf.int32),
      tf.cast(tf.not_equal(sorted_key[:, 1:], sorted_key[:, :-1]), tf.int32)
  ], axis=1)
  sorted_index = tf.cumsum(is_new, axis=1) - 1
  inverse_order = tf.argsort(order, axis=1)
  mask_id = tf.gather(sorted_index, inverse_order, batch_dims=1)  # [B, P]
  mask_id = tf.where(in_mask, mask_id, -1)

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
  non_void = tf.cast(mask_id >= 0, tf.float32)
  one_hot = tf.one_hot(mask_id, num_mask_slots, dtype=tf.float32)  # [B, P, M]
  mask_area = tf.reduce_sum(one_hot, axis=1)  # [B, M]
  mask_valid = tf.cast(mask_area > 0.0, tf.float32)
  # Every pixel of a mask carries its class, so a max over the mask works.
  mask_class = tf.reduce_max(
      one_hot * tf.cast(semantic[..., tf.newaxis], tf.float32), axis=1)
  mask_class = tf.cast(mask_class, tf.int32) * tf.cast(mask_valid, tf.int32)
  pixel_area = tf.einsum('bpm,bm->bp', one_hot, mask_area)
  inverse_area = float(num_pixels) / tf.maximum(pixel_area, 1.0)

  semantic_label = tf.where(is_void, ignore_label, semantic)
  semantic_label = tf.reshape(
      semantic_label, [batch_size, clip_length, height, width])
  return {
      PIXEL_MASK_ID: mask_id,
      PIXEL_NON_VOID: non_void,
      PIXEL_MASK_ONE_HOT: one_hot,
      PIXEL_INVERSE_MASK_AREA: inverse_area,
      MASK_CLASS: mask_class,
      MASK_VALID: mask_valid,
      MASK_AREA: mask_area,
      NUM_MASKS: tf.minimum(num_masks, num_mask_slots),
      SEMANTIC_LABEL: semantic_label,
  }
