"""Clip post-processing: clip-kMaX tube logits -> per-frame panoptic maps.

Implements the post-processing step of clip-kMaX (Video-kMaX paper, Sec. 3.1;
docs/model.md, "Post-processing") with DeepLab2's semantics
(`model/post_processor/max_deeplab.py`; at T = 1 the panoptic map equals
DeepLab2's, tests/fidelity). The model predicts N mask slots per clip; the T
frames of one slot form one *tube*, so a slot becomes one segment that spans
every frame of the clip and a thing keeps the same instance id in all of them.
That shared id is what cross-clip association (`deeplab2_vkmax.association`)
stitches on. Class channels are in DeepLab2's order (`model/class_order.py`).

Two modes, as DeepLab2's `transformer_post_processing`:

* ``'maskwise'`` (kMaX-DeepLab): the mask probabilities are a softmax over slots; a
  slot's binary tube is ``prob > pixel_confidence_threshold`` (no argmax condition,
  so two slots may claim the same pixel when the threshold is below 0.5, as in
  DeepLab2; docs/model.md, "Post-processing"). Every slot is ranked by
  ``class_conf ** reorder_class_weight * mean_mask_prob ** reorder_mask_weight``
  (mean over the slot's binary mask at the
  decoder resolution, before the resize) and, from high to low, a slot whose
  class confidence passes the thing/stuff threshold pastes its tube onto the
  still-free pixels if more than ``overlapping_threshold`` of it is free. A
  thing's instance id is its rank + 1.
* ``'pixelwise'`` (MaX-DeepLab style): slots whose class confidence is below the
  thing/stuff threshold are removed, every pixel takes the argmax of the remaining
  slots if that is also its argmax over all slots and its (renormalised)
  probability is above ``pixel_confidence_threshold``; a thing's instance id is
  its slot index + 1.

In both, after the merge, thing segments with fewer than ``thing_area_limit``
pixels and stuff classes with fewer than ``stuff_area_limit`` pixels become void.

Everything runs in-graph (`tf.function`, dynamic B/T/H/W/N, XLA-compatible ops): the
sequential paste is one `tf.while_loop` over rank positions, vectorised across the
batch.
"""

from typing import Mapping, Sequence, Tuple, Union

import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model import class_order
from deeplab2_vkmax.model import post_processor
from deeplab2_vkmax.protos import evaluator_pb2
from deeplab2_vkmax.protos import fields

_POST_PROCESSING_MODES = post_processor.POST_PROCESSING_MODES
# Defaults: `EvaluatorOptions` in deeplab2_vkmax/protos/evaluator.proto.
_DEFAULTS = fields.defaults(evaluator_pb2.EvaluatorOptions)
_MASKWISE_DEFAULTS = fields.defaults(evaluator_pb2.MaskWisePostProcessingOptions)

SizeLike = Union[Tuple[int, int], Sequence[Union[int, tf.Tensor]], tf.Tensor]


def _slot_areas(owner: tf.Tensor, num_slots) -> tf.Tensor:
  """float32 [B, N]: pixels each slot owns in `owner` [B, P] (-1: none).

  One segment sum over the pixels, not an [B, N, P] one-hot: the owner map is
  read once whatever N is.
  """
  batch = tf.shape(owner)[0]
  segments = owner + 1 + tf.range(batch)[:, None] * (num_slots + 1)  # -1 -> column 0.
  areas = tf.math.unsorted_segment_sum(tf.ones_like(owner, tf.float32), segments,
                                       batch * (num_slots + 1))
  return tf.reshape(areas, tf.stack([batch, num_slots + 1]))[:, 1:]


class ClipPostProcessor(tf.Module):
  """Turns clip-kMaX outputs into per-frame panoptic maps and per-slot segments.

  Conventions of the returned tensors:

  * Panoptic ids are ``semantic * label_divisor + instance``. A kept thing has
    instance id rank + 1 (maskwise) or slot index + 1 (pixelwise) in every frame
    of the clip; stuff has instance 0; pixels that no kept slot claims are
    ``ignore_label * label_divisor``.
  * Per-slot outputs have one row per slot ``n``. A slot is *kept* iff its score is
    > 0 (a kept slot's score is a product of positive terms). ``SEGMENT_IDS`` lists
    kept things and kept stuff alike (stuff id = ``class * label_divisor``, which is
    0 for stuff class 0: use the score, not the id, as the kept flag); thing rows are
    exactly those with ``id % label_divisor > 0``, which is what association needs.
  * Areas (``thing_area_limit``/``stuff_area_limit``) count pixels at the output
    size over the whole tube (all T frames), since the tube is one segment;
    stuff slots of the same class merge (one panoptic id) and are area-tested
    together, as in DeepLab2.
  * Boxes are pixel-edge boxes of the pixels a slot finally owns in a frame,
    ``[x_min / W, y_min / H, (x_max + 1) / W, (y_max + 1) / H]`` (a full frame is
    ``[0, 0, 1, 1]``); all zeros where the slot owns no pixel in that frame.
  """

  def __init__(self,
               *,
               num_classes: int,
               label_divisor: int,
               thing_class_ids: Sequence[int],
               ignore_label: int,
               post_processing: str = _DEFAULTS['transformer_post_processing'],
               pixel_confidence_threshold: float = _DEFAULTS['pixel_confidence_threshold'],
               transformer_class_confidence_threshold_thing: float = (
                   _MASKWISE_DEFAULTS['transformer_class_confidence_threshold_thing']),
               transformer_class_confidence_threshold_stuff: float = (
                   _MASKWISE_DEFAULTS['transformer_class_confidence_threshold_stuff']),
               overlapping_threshold: float = _MASKWISE_DEFAULTS['overlapping_threshold'],
               reorder_class_weight: float = _MASKWISE_DEFAULTS['reorder_class_weight'],
               reorder_mask_weight: float = _MASKWISE_DEFAULTS['reorder_mask_weight'],
               thing_area_limit: int = _DEFAULTS['thing_area_limit'],
               stuff_area_limit: int = _DEFAULTS['stuff_area_limit'],
               name: str = 'clip_post_processor'):
    """Initialises the post-processor.

    Args:
      num_classes: Number of semantic classes C (the class logits have C + 1
        entries, void last).
      label_divisor: Panoptic id = semantic * label_divisor + instance. Must exceed
        the number of mask slots N so that instance ids (slot + 1) fit.
      thing_class_ids: Semantic ids of thing classes; every other class is stuff.
      ignore_label: Semantic label of unassigned (void) pixels.
      post_processing: 'maskwise' (kMaX) or 'pixelwise'.
      pixel_confidence_threshold: Mask-probability threshold of a binary mask.
      transformer_class_confidence_threshold_thing: Minimum class confidence of a
        thing slot.
      transformer_class_confidence_threshold_stuff: Minimum class confidence of a
        stuff slot.
      overlapping_threshold: A slot pastes only if more than this fraction of
        its binary tube is still free (maskwise only).
      reorder_class_weight: Exponent of the class confidence in the rank score.
      reorder_mask_weight: Exponent of the mean mask probability in the rank score.
      thing_area_limit: Thing segments with fewer pixels (whole tube, output
        size) become void after the merge.
      stuff_area_limit: Same for each stuff class (its slots together).
      name: Module name.

    Raises:
      ValueError: If `post_processing` is not a known mode, or a class id or
        threshold is out of range.
    """
    super().__init__(name=name)
    if post_processing not in _POST_PROCESSING_MODES:
      raise ValueError(
          f'post_processing must be one of {_POST_PROCESSING_MODES}, got '
          f'{post_processing!r}.')
    if num_classes <= 0:
      raise ValueError(f'num_classes must be positive, got {num_classes}.')
    if label_divisor <= 0:
      raise ValueError(f'label_divisor must be positive, got {label_divisor}.')
    bad_ids = [c for c in thing_class_ids if not 0 <= c < num_classes]
    if bad_ids:
      raise ValueError(
          f'thing_class_ids must lie in [0, num_classes={num_classes}), got '
          f'{bad_ids}.')
    if not 0.0 <= overlapping_threshold <= 1.0:
      raise ValueError('overlapping_threshold must lie in [0, 1], got '
                       f'{overlapping_threshold}.')
    self.num_classes = num_classes
    self.label_divisor = label_divisor
    self.thing_class_ids = tuple(int(c) for c in thing_class_ids)
    self.ignore_label = ignore_label
    self.post_processing = post_processing
    self.pixel_confidence_threshold = pixel_confidence_threshold
    self.transformer_class_confidence_threshold_thing = (
        transformer_class_confidence_threshold_thing)
    self.transformer_class_confidence_threshold_stuff = (
        transformer_class_confidence_threshold_stuff)
    self.overlapping_threshold = overlapping_threshold
    self.reorder_class_weight = reorder_class_weight
    self.reorder_mask_weight = reorder_mask_weight
    self.thing_area_limit = thing_area_limit
    self.stuff_area_limit = stuff_area_limit
    self._channel_class_ids = class_order.channel_class_ids(num_classes,
                                                            self.thing_class_ids)

  def __call__(self, outputs: Mapping[str, tf.Tensor],
               output_size: SizeLike) -> dict:
    """Post-processes one batch of clips.

    Args:
      outputs: Model output dict with
        `common.PRED_PIXEL_SPACE_MASK_LOGITS`: float [B, T, h, w, N];
        `common.PRED_TRANSFORMER_CLASS_LOGITS`: float [B, N, C + 1], channels in
          DeepLab2's order (`model/class_order.py`: things, stuff, void last);
        `common.PRED_QUERY_EMBEDDINGS`: float [B, N, E].
      output_size: (H, W), Python ints or scalar int tensors. Mask logits are
        resized to it per frame, bilinearly with aligned corners (DeepLab2 crops
        are 4k + 1, so aligned corners maps the OS4 grid exactly).

    Returns:
      A dict with
        `common.PANOPTIC_PRED`: int32 [B, T, H, W].
        `common.SEMANTIC_PRED`: int32 [B, T, H, W], panoptic // label_divisor.
        `common.SEGMENT_IDS`: int32 [B, N], panoptic id of each kept slot, else 0.
        `common.SEGMENT_CLASSES`: int32 [B, N], class of each kept slot, else
          ignore_label.
        `common.SEGMENT_SCORES`: float32 [B, N], rank score of each kept slot,
          else 0.
        `common.PRED_QUERY_EMBEDDINGS`: [B, N, E], passed through.
        `common.SEGMENT_BOXES`: float32 [B, T, N, 4], normalised
          [x0, y0, x1, y1] per frame, zeros where the slot is absent.
    """
    with tf.name_scope(self.name):
      mask_logits = tf.convert_to_tensor(
          outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS])
      class_logits = tf.convert_to_tensor(
          outputs[common.PRED_TRANSFORMER_CLASS_LOGITS])
      query_embeddings = outputs[common.PRED_QUERY_EMBEDDINGS]
      mask_logits = tf.cast(mask_logits, tf.float32)
      class_logits = tf.cast(class_logits, tf.float32)

      out_h = tf.cast(tf.convert_to_tensor(output_size[0]), tf.int32)
      out_w = tf.cast(tf.convert_to_tensor(output_size[1]), tf.int32)
      static_slots = mask_logits.shape[-1]
      if static_slots is not None and static_slots >= self.label_divisor:
        raise ValueError(
            f'label_divisor ({self.label_divisor}) must exceed the number of mask '
            f'slots ({static_slots}): thing instance ids are slot index + 1.')
      shape = tf.shape(mask_logits)
      batch, frames, num_slots = shape[0], shape[1], shape[4]

      # Fold T into batch for the per-frame resize: [B*T, h, w, N].
      frames_logits = tf.reshape(
          mask_logits, tf.concat([[batch * frames], shape[2:]], axis=0))
      # The op behind tf.compat.v1.image.resize_bilinear(align_corners=True),
      # called directly: same numerics, no deprecation warning on every trace.
      # (Resizing slot-major [B*N*T, h, w, 1] images instead, to skip the
      # transpose below, measured 1.5x slower: the op vectorises over channels.)
      frames_logits = tf.raw_ops.ResizeBilinear(
          images=frames_logits, size=tf.stack([out_h, out_w]),
          align_corners=True, half_pixel_centers=False)
      num_pixels = frames * out_h * out_w
      pixel_logits = tf.reshape(frames_logits, [batch, num_pixels, num_slots])
      # DeepLab2 ranks slots by mask confidence at the decoder resolution,
      # before the resize: [B, N, T*h*w].
      decoder_logits = tf.transpose(
          tf.reshape(mask_logits, [batch, -1, num_slots]), [0, 2, 1])

      class_probs = tf.nn.softmax(class_logits, axis=-1)[..., :-1]  # [B, N, C]
      # Channels are in DeepLab2's order (things first): map to dataset ids.
      slot_classes = tf.gather(
          tf.constant(self._channel_class_ids, tf.int32),
          tf.argmax(class_probs, axis=-1, output_type=tf.int32))
      class_conf = tf.reduce_max(class_probs, axis=-1)  # [B, N]
      is_thing = self._is_thing(slot_classes)  # [B, N]
      class_ok = class_conf >= tf.where(
          is_thing, self.transformer_class_confidence_threshold_thing,
          self.transformer_class_confidence_threshold_stuff)

      if self.post_processing == 'maskwise':
        owner, scores, instance_ids = self._maskwise(
            pixel_logits, decoder_logits, class_conf, class_ok)
      else:
        # Slot-major so a slot's whole tube is one contiguous row: [B, N, T*H*W].
        owner, scores, instance_ids = self._pixelwise(
            tf.transpose(pixel_logits, [0, 2, 1]), class_conf, class_ok)
      owner, kept = self._filter_by_area(owner, slot_classes, is_thing,
                                         num_slots)
      return self._assemble(owner, kept, scores, slot_classes, is_thing,
                            instance_ids, query_embeddings, batch, frames,
                            out_h, out_w, num_slots)

  def _is_thing(self, classes: tf.Tensor) -> tf.Tensor:
    """Bool tensor shaped like `classes`: True where the class is a thing."""
    thing_ids = tf.constant(self.thing_class_ids, dtype=tf.int32, shape=[
        len(self.thing_class_ids)])
    return tf.reduce_any(tf.equal(classes[..., None], thing_ids), axis=-1)

  def _rank_score(self, class_conf: tf.Tensor,
                  mean_mask_prob: tf.Tensor) -> tf.Tensor:
    return (tf.pow(class_conf, self.reorder_class_weight) *
            tf.pow(mean_mask_prob, self.reorder_mask_weight))

  def _maskwise(self, pixel_logits, decoder_logits, class_conf, class_ok):
    """kMaX mask-wise merging on tubes (DeepLab2's `maskwise` post-processing).

    Every slot is ranked by its score (mask confidence from `decoder_logits`);
    in rank order, a class-confident slot pastes its binary tube onto the
    still-free pixels if more than `overlapping_threshold` of it is free. A
    pasted thing's instance id is its rank + 1, as in DeepLab2.

    Args:
      pixel_logits: float32 [B, P, N] mask logits at the output size, P = T*H*W.
      decoder_logits: float32 [B, N, p] the same at the decoder resolution.
      class_conf: float32 [B, N].
      class_ok: bool [B, N], class confidence passes the thing/stuff threshold.

    Returns:
      owner: int32 [B, P], slot owning each pixel, -1 if none.
      scores: float32 [B, N], rank score of every slot.
      instance_ids: int32 [B, N], instance id of each slot (rank + 1).
    """
    decoder_probs = tf.nn.softmax(decoder_logits, axis=1)
    decoder_binary = tf.cast(decoder_probs > self.pixel_confidence_threshold,
                             tf.float32)
    mean_mask_prob = tf.math.divide_no_nan(
        tf.reduce_sum(decoder_probs * decoder_binary, axis=-1),
        tf.reduce_sum(decoder_binary, axis=-1))
    scores = self._rank_score(class_conf, mean_mask_prob)
    order = tf.argsort(scores, axis=-1, direction='DESCENDING',
                       stable=True)  # [B, N]: slot at each rank.
    rank = tf.argsort(order, axis=-1, stable=True)  # [B, N]: rank of each slot.

    # Softmax over slots on the last axis (contiguous), then slot-major so a
    # slot's whole tube is one contiguous row: [B, N, P].
    probs = tf.transpose(tf.nn.softmax(pixel_logits, axis=-1), [0, 2, 1])
    # Only class-confident slots can paste, so the loop visits just those, in
    # rank order (a stable sort keeps the rank order among them); each visit
    # thresholds its own row, so no [B, N, P] binary tensor is built.
    paste_order = tf.argsort(tf.where(class_ok, scores, -1.0), axis=-1,
                             direction='DESCENDING', stable=True)
    num_visits = tf.reduce_max(tf.reduce_sum(tf.cast(class_ok, tf.int32), axis=-1))
    batch = tf.shape(probs)[0]
    num_pixels = tf.shape(probs)[2]

    def body(k, owner):
      slot = paste_order[:, k]  # [B]
      mask = tf.gather(probs, slot, axis=1, batch_dims=1) > (
          self.pixel_confidence_threshold)  # [B, P]
      free_mask = mask & (owner < 0)
      slot_area = tf.reduce_sum(tf.cast(mask, tf.float32), axis=-1)  # [B]
      free_area = tf.reduce_sum(tf.cast(free_mask, tf.float32), axis=-1)
      # A batch element with fewer confident slots reaches unconfident ones here.
      paste = (tf.gather(class_ok, slot, axis=1, batch_dims=1) &
               (free_area > self.overlapping_threshold * slot_area))
      owner = tf.where(free_mask & paste[:, None], slot[:, None], owner)
      return k + 1, owner

    _, owner = tf.while_loop(
        lambda k, owner: k < num_visits, body,
        (tf.constant(0), tf.fill([batch, num_pixels], -1)),
        parallel_iterations=1)
    return owner, scores, rank + 1

  def _pixelwise(self, tube_logits, class_conf, class_ok):
    """Pixel-wise argmax over class-confident slots (DeepLab2's `pixelwise`).

    A pixel takes the class-confident slot of highest logit if that slot is
    also its argmax over all slots and its probability, renormalised among
    the confident slots, exceeds `pixel_confidence_threshold`. Arguments and
    returns as `_maskwise`; instance ids are slot index + 1.
    """
    num_slots = tf.shape(tube_logits)[1]
    # Low-confidence slots leave the softmax: the rest renormalise among themselves.
    masked_logits = tf.where(class_ok[..., None], tube_logits,
                             tf.constant(-1e9, tf.float32))
    probs = tf.nn.softmax(masked_logits, axis=1)  # [B, N, P]
    owner = tf.argmax(probs, axis=1, output_type=tf.int32)  # [B, P]
    owner_ok = ((tf.reduce_max(probs, axis=1) > self.pixel_confidence_threshold) &
                tf.equal(tf.reduce_max(masked_logits, axis=1),
                         tf.reduce_max(tube_logits, axis=1)))
    owner = tf.where(owner_ok, owner, -1)
    owned_f = tf.cast(tf.equal(owner[:, None, :],
                               tf.range(num_slots)[None, :, None]), tf.float32)
    mean_mask_prob = tf.math.divide_no_nan(
        tf.reduce_sum(probs * owned_f, axis=-1), tf.reduce_sum(owned_f, axis=-1))
    scores = self._rank_score(class_conf, mean_mask_prob)
    instance_ids = tf.broadcast_to(tf.range(1, num_slots + 1)[None, :],
                                   tf.shape(class_conf))
    return owner, scores, instance_ids

  def _filter_by_area(self, owner, slot_classes, is_thing, num_slots):
    """Voids thing segments and stuff classes below their area limit.

    As DeepLab2's `_merge_mask_id_and_semantic_maps`, after the merge: a thing
    counts the pixels its slot owns, stuff counts all pixels of its class
    (stuff slots of one class merge); the voided pixels stay void. Areas are
    over the whole tube (T frames) at the output size.

    Args:
      owner: int32 [B, P], slot of each pixel, -1 if none.
      slot_classes: int32 [B, N]; is_thing: bool [B, N].
      num_slots: N.

    Returns:
      owner with filtered pixels set to -1, and kept: bool [B, N], slots
      that own pixels after filtering.
    """
    slot_area = _slot_areas(owner, num_slots)  # [B, N]
    same_stuff_class = tf.cast(
        tf.equal(slot_classes[:, :, None], slot_classes[:, None, :]) &
        ~is_thing[:, :, None] & ~is_thing[:, None, :], tf.float32)
    class_area = tf.einsum('bnm,bm->bn', same_stuff_class, slot_area)
    area_ok = tf.where(is_thing, slot_area >= float(self.thing_area_limit),
                       class_area >= float(self.stuff_area_limit))
    kept = area_ok & (slot_area > 0)
    owner = tf.where(
        (owner >= 0) & tf.gather(kept, tf.maximum(owner, 0), axis=1, batch_dims=1),
        owner, -1)
    return owner, kept

  def _assemble(self, owner, kept, scores, slot_classes, is_thing, instance_ids,
                query_embeddings, batch, frames, out_h, out_w, num_slots):
    """Builds the output dict from the pixel -> slot owner map [B, T*H*W]."""
    void_id = self.ignore_label * self.label_divisor
    slot_ids = slot_classes * self.label_divisor + tf.where(
        is_thing, instance_ids, 0)  # [B, N]
    segment_ids = tf.where(kept, slot_ids, 0)
    pixel_ids = tf.gather(slot_ids, tf.maximum(owner, 0), axis=1, batch_dims=1)
    panoptic = tf.where(owner >= 0, pixel_ids, void_id)
    panoptic = tf.reshape(panoptic, tf.stack([batch, frames, out_h, out_w]))
    semantic = tf.math.floordiv(panoptic, self.label_divisor)

    boxes = self._boxes(owner, batch, frames, out_h, out_w, num_slots)
    return {
        common.PANOPTIC_PRED: panoptic,
        common.SEMANTIC_PRED: semantic,
        common.SEGMENT_IDS: segment_ids,
        common.SEGMENT_CLASSES: tf.where(kept, slot_classes, self.ignore_label),
        common.SEGMENT_SCORES: tf.where(kept, scores, 0.0),
        common.PRED_QUERY_EMBEDDINGS: query_embeddings,
        common.SEGMENT_BOXES: boxes,
    }

  def _boxes(self, owner, batch, frames, out_h, out_w, num_slots):
    """Per-frame boxes of each slot's owned pixels: float32 [B, T, N, 4].

    One segment-min/max pass over the pixels (no [.., N] one-hot at output
    resolution); segment (b, t, n) gets id (b*T + t)*N + n, unowned pixels a last
    dump segment.
    """
    owner = tf.reshape(owner, tf.stack([batch, frames, out_h * out_w]))
    ys = tf.repeat(tf.range(out_h), out_w)  # [H*W], row of each pixel.
    xs = tf.tile(tf.range(out_w), [out_h])
    frame_base = (tf.range(batch * frames) * num_slots)
    frame_base = tf.reshape(frame_base, tf.stack([batch, frames, 1]))
    num_segments = batch * frames * num_slots
    seg = tf.where(owner >= 0, frame_base + owner, num_segments)
    seg = tf.reshape(seg, [-1])
    ys = tf.tile(ys, [batch * frames])
    xs = tf.tile(xs, [batch * frames])
    total = num_segments + 1
    x0 = tf.math.unsorted_segment_min(xs, seg, total)[:-1]
    y0 = tf.math.unsorted_segment_min(ys, seg, total)[:-1]
    x1 = tf.math.unsorted_segment_max(xs, seg, total)[:-1] + 1
    y1 = tf.math.unsorted_segment_max(ys, seg, total)[:-1] + 1
    present = tf.math.unsorted_segment_max(
        tf.ones_like(seg), seg, total)[:-1] > 0
    w = tf.cast(out_w, tf.float32)
    h = tf.cast(out_h, tf.float32)
    boxes = tf.stack([
        tf.cast(x0, tf.float32) / w,
        tf.cast(y0, tf.float32) / h,
        tf.cast(x1, tf.float32) / w,
        tf.cast(y1, tf.float32) / h
    ], axis=-1)
    boxes = tf.where(present[:, None], boxes, 0.0)
    return tf.reshape(boxes, tf.stack([batch, frames, num_slots, 4]))
