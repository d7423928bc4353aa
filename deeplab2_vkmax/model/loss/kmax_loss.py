"""The kMaX training objective applied to clip tubes (Video-kMaX).

docs/loss.md fixes the losses; they are kMaX-DeepLab's, computed with DeepLab2's
conventions (`model/loss/max_deeplab_loss.py MaXDeepLabLoss`,
`model/loss/base_loss.py`; every term equals DeepLab2's on its loss pack,
tests/fidelity; docs/loss.md lists each convention), applied to a clip whose
frames are stacked along height, so one ground-truth mask is a whole thing tube or
a stuff class of the clip (paper Sec. 3.1: clip-kMaX adds "no extra ... loss
functions").

Terms, per output (the main one and each deep-supervision output), each a
per-example [B] float32 tensor, already weighted:
  - Hungarian matching, computed once from the MAIN output and reused by every
    auxiliary output: cost -(dice(gt_mask, softmax_over_slots(mask_logits) *
    non_void) * P(gt class | slot)), dice = I / ((|g| + |p|) / 2 + 1e-5).
  - PQ-style loss (weight 3.0), MaX-DeepLab Eq. (10): a class term, focal
    cross-entropy (alpha 0.75, gamma 0) weighted by the stop-gradient matched
    dice for matched slots and by the stop-gradient share of the slot's mask on
    void pixels (`sum(p * void) / (sum(p) + 1e-5)`) for unmatched slots (target:
    void), divided by the number of non-zero slot losses; and a mask term, the
    smoothed dice loss 1 - (2I + 1) / (|g| + |p| + 1) over pixels inside some
    ground-truth mask, weighted by max(matched class probability, 1e-5), summed
    over ground-truth masks and scaled by alpha / N.
  - Mask-ID cross-entropy (0.3): per-pixel softmax cross-entropy over slots
    against the slot matched to the pixel's ground-truth mask (void and crowd
    give 0), divided by the number of non-zero pixel losses.
  - Instance discrimination (1.0), CMT-DeepLab's pixel contrastive loss:
    `sample_k` pixels drawn without replacement (Gumbel top-k, independently per
    output) with logits temperature * log(P / area of the pixel's mask), void
    pixels masked by -99999 (crowd pixels are not); target = row-normalised
    same-mask matrix, logits = feature similarities / 0.3, nothing masked;
    divided by the number of non-zero row losses.
  - Semantic loss (1.0): softmax cross-entropy of the auxiliary semantic head
    against the label strided to the logits' size, void ignored, optional
    small-instance weights, the top-k percent of the (weighted) pixel losses,
    divided by the number of those that are non-zero.
The total is the sum of every term of every output.

The class targets use DeepLab2's channel order (things, stuff, void:
`model/class_order.py`). Void and crowd: see `clip_targets.py`.
"""

from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model import class_order
from deeplab2_vkmax.model.loss import clip_targets
from deeplab2_vkmax.model.loss import matchers
from deeplab2_vkmax.protos import dataset_pb2
from deeplab2_vkmax.protos import fields
from deeplab2_vkmax.protos import model_pb2
from deeplab2_vkmax.protos import trainer_pb2

# Lower bound of the stop-gradient loss weights (DeepLab2): a weight of exactly
# zero would silently drop a term that should still count.
_MIN_LOSS_WEIGHT = 1e-5
# Defaults of the settings a config gives (deeplab2_vkmax/protos/*.proto). The
# four loss weights are DeepLab2's kMaX weights, declared here only: the config's
# `SingleLossOptions` applies when set (deeplab2_vkmax.builder).
_KMAX = fields.defaults(model_pb2.ClipKMaXOptions)
_SINGLE_LOSS = fields.defaults(trainer_pb2.SingleLossOptions)
_DATASET = fields.defaults(dataset_pb2.DatasetOptions, ('small_instance_threshold',))
# DeepLab2's epsilon in the matching dice and the void ratio denominators.
_SIMILARITY_EPSILON = 1e-5
# DeepLab2's smoothing constant of the dice loss.
_DICE_SMOOTH = 1.0
# DeepLab2's `_SOFTMAX_MASKING_CONSTANT`: added to the sampling logits of void
# pixels.
_SAMPLING_MASKING_CONSTANT = -99999.0
_TERMS = (common.PQ_STYLE_LOSS_CLASS_TERM, common.PQ_STYLE_LOSS_MASK_DICE_TERM,
          common.MASK_ID_CROSS_ENTROPY_LOSS, common.INSTANCE_DISCRIMINATION_LOSS)


def output_term_key(output_index: int, term: str) -> str:
  """Key of one output's term in the loss dict: 'main/<term>', 'aux_<i>/<term>'.

  Output 0 is the main output, output i > 0 the (i-1)-th deep-supervision
  output (DeepLab2 names the latter `aux_<i-1><term>`).
  """
  return f'main/{term}' if output_index == 0 else f'aux_{output_index - 1}/{term}'


def _flatten_pixels(tensor: tf.Tensor) -> tf.Tensor:
  """[B, T, h, w, K] -> [B, T*h*w, K]: frames stacked along height, row-major."""
  _, clip_length, height, width, channels = tensor.shape
  # Losses run in float32 even when the model emits bfloat16/float16.
  tensor = tf.cast(tensor, tf.float32)
  return tf.reshape(tensor, [-1, clip_length * height * width, channels])


def _mean_of_non_zero(losses: tf.Tensor) -> tf.Tensor:
  """Sum over the last axis / number of non-zero entries (0 if none): [B, K] -> [B].

  DeepLab2's normalisation of every cross-entropy (`compute_average_top_k_loss`
  and `FocalCrossEntropyLoss`): an entry that is exactly zero (void, crowd, or a
  saturated correct prediction) does not count.
  """
  count = tf.reduce_sum(tf.cast(tf.not_equal(losses, 0.0), tf.float32), axis=-1)
  return tf.math.divide_no_nan(tf.reduce_sum(losses, axis=-1), count)


def _matching_dice(gt_mask: tf.Tensor, pred_mask: tf.Tensor) -> tf.Tensor:
  """DeepLab2's matching similarity I / ((|g| + |p|) / 2 + 1e-5): [B, M, N].

  Args:
    gt_mask: [B, P, M] binary masks.
    pred_mask: [B, P, N] soft masks.
  """
  intersection = tf.einsum('bpm,bpn->bmn', gt_mask, pred_mask)
  half_sum = (tf.reduce_sum(gt_mask, axis=1)[:, :, tf.newaxis] +
              tf.reduce_sum(pred_mask, axis=1)[:, tf.newaxis, :]) / 2.0
  return intersection / (half_sum + _SIMILARITY_EPSILON)


class KMaXLoss:
  """kMaX-DeepLab losses on clip tubes; see the module docstring.

  A plain callable (it owns no variables): build it once, call it inside the
  train step. Every returned loss is per example, so a trainer under
  `tf.distribute` reduces with `reduce_sum(loss) / global_batch_size`.
  """

  def __init__(self,
               *,
               num_classes: int,
               ignore_label: int,
               label_divisor: int,
               thing_class_ids: Sequence[int],
               num_mask_slots: int,
               output_stride: int = _KMAX['decoder_output_stride'],
               pq_style_loss_weight: float = 3.0,
               mask_id_cross_entropy_loss_weight: float = 0.3,
               instance_discrimination_loss_weight: float = 1.0,
               semantic_loss_weight: float = 1.0,
               semantic_top_k_percent: float = _SINGLE_LOSS['top_k_percent'],
               instance_discrimination_sample_k: int = _KMAX['instance_discrimination_sample_k'],
               instance_discrimination_sample_temperature: float = (
                   _KMAX['instance_discrimination_sample_temperature']),
               instance_discrimination_temperature: float = (
                   _KMAX['instance_discrimination_temperature']),
               pq_focal_alpha: float = 0.75,
               small_instance_area: int = _DATASET['small_instance_threshold'],
               small_instance_weight: float = 1.0,
               use_auxiliary_outputs: bool = _KMAX['use_auxiliary_outputs']):
    """Initialises the loss.

    Args:
      num_classes: Number of thing + stuff classes C; the class logits have
        C + 1 channels in DeepLab2's order (things, stuff, void last).
      ignore_label: Semantic id of void pixels.
      label_divisor: Panoptic label divisor.
      thing_class_ids: Semantic ids of thing classes (their order is the
        order of the thing channels).
      num_mask_slots: Number of mask slots N of the model (also the number of
        ground-truth mask slots of a clip).
      output_stride: Stride between the label and the predicted masks.
      pq_style_loss_weight: Weight of the PQ-style loss (both terms).
      mask_id_cross_entropy_loss_weight: Weight of the mask-ID cross-entropy.
      instance_discrimination_loss_weight: Weight of instance discrimination.
      semantic_loss_weight: Weight of the semantic loss.
      semantic_top_k_percent: Fraction in (0, 1] of the hardest pixels kept
        by the semantic loss.
      instance_discrimination_sample_k: Pixels sampled per clip and output;
        clipped to the clip's pixel count (DeepLab2 fails there instead).
      instance_discrimination_sample_temperature: Exponent on 1 / mask area
        of the sampling probability (DeepLab2's default 0.6; COCO configs 1.5).
      instance_discrimination_temperature: Softmax temperature of the
        feature similarities.
      pq_focal_alpha: Focal alpha: weight of matched (positive) class terms;
        unmatched (void-target) slots get 1 - alpha. Also scales the mask term.
      small_instance_area, small_instance_weight: semantic-loss weight of
        the pixels of thing instances smaller than `small_instance_area`
        pixels per frame (DeepLab2's `increase_small_instance_weights`;
        weight 1.0 turns it off).
      use_auxiliary_outputs: Whether to add the loss of every output in
        `common.PRED_AUX_OUTPUTS`.

    Raises:
      ValueError: On out-of-range weights, fractions or sizes.
    """
    if not 0.0 < semantic_top_k_percent <= 1.0:
      raise ValueError('semantic_top_k_percent must be in (0, 1]; got '
                       f'{semantic_top_k_percent}.')
    if num_mask_slots <= 0 or num_classes <= 0:
      raise ValueError('num_mask_slots and num_classes must be positive; got '
                       f'{num_mask_slots} and {num_classes}.')
    if instance_discrimination_sample_k <= 0:
      raise ValueError('instance_discrimination_sample_k must be positive; '
                       f'got {instance_discrimination_sample_k}.')
    if instance_discrimination_temperature <= 0.0:
      raise ValueError('instance_discrimination_temperature must be positive; '
                       f'got {instance_discrimination_temperature}.')
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.label_divisor = label_divisor
    self.thing_class_ids = tuple(thing_class_ids)
    self.num_mask_slots = num_mask_slots
    self.output_stride = output_stride
    self.pq_style_loss_weight = pq_style_loss_weight
    self.mask_id_cross_entropy_loss_weight = mask_id_cross_entropy_loss_weight
    self.instance_discrimination_loss_weight = (
        instance_discrimination_loss_weight)
    self.semantic_loss_weight = semantic_loss_weight
    self.semantic_top_k_percent = semantic_top_k_percent
    self.instance_discrimination_sample_k = instance_discrimination_sample_k
    self.instance_discrimination_sample_temperature = (
        instance_discrimination_sample_temperature)
    self.instance_discrimination_temperature = (
        instance_discrimination_temperature)
    self.pq_focal_alpha = pq_focal_alpha
    self.small_instance_area = small_instance_area
    self.small_instance_weight = small_instance_weight
    self.use_auxiliary_outputs = use_auxiliary_outputs
    # Dataset class id -> class-logit channel.
    self._class_channels = class_order.class_channels(num_classes, self.thing_class_ids)
    self._warned_sample_k = False

  def get_config(self) -> Dict[str, Any]:
    """Returns the constructor arguments."""
    return {
        'num_classes': self.num_classes,
        'ignore_label': self.ignore_label,
        'label_divisor': self.label_divisor,
        'thing_class_ids': list(self.thing_class_ids),
        'num_mask_slots': self.num_mask_slots,
        'output_stride': self.output_stride,
        'pq_style_loss_weight': self.pq_style_loss_weight,
        'mask_id_cross_entropy_loss_weight':
            self.mask_id_cross_entropy_loss_weight,
        'instance_discrimination_loss_weight':
            self.instance_discrimination_loss_weight,
        'semantic_loss_weight': self.semantic_loss_weight,
        'semantic_top_k_percent': self.semantic_top_k_percent,
        'instance_discrimination_sample_k':
            self.instance_discrimination_sample_k,
        'instance_discrimination_sample_temperature':
            self.instance_discrimination_sample_temperature,
        'instance_discrimination_temperature':
            self.instance_discrimination_temperature,
        'pq_focal_alpha': self.pq_focal_alpha,
        'small_instance_area': self.small_instance_area,
        'small_instance_weight': self.small_instance_weight,
        'use_auxiliary_outputs': self.use_auxiliary_outputs,
    }

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'KMaXLoss':
    return cls(**config)

  def build_targets(self, panoptic_label: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Clip ground truth; see `clip_targets.build_clip_targets`."""
    return clip_targets.build_clip_targets(
        panoptic_label,
        num_classes=self.num_classes,
        ignore_label=self.ignore_label,
        label_divisor=self.label_divisor,
        thing_class_ids=self.thing_class_ids,
        num_mask_slots=self.num_mask_slots,
        output_stride=self.output_stride)

  def __call__(self,
               y_true: Mapping[str, tf.Tensor],
               y_pred: Mapping[str, Any],
               *,
               sample_seed: Optional[tf.Tensor] = None,
               assignment: Optional[tf.Tensor] = None) -> Dict[str, Any]:
    """Computes the losses of one batch of clips.

    Args:
      y_true: {common.PANOPTIC_LABEL: int [B, T, H, W]} at crop resolution.
      y_pred: Model outputs:
        - common.PRED_PIXEL_SPACE_MASK_LOGITS: [B, T, h, w, N],
          h = ceil(H / output_stride), w = ceil(W / output_stride).
        - common.PRED_TRANSFORMER_CLASS_LOGITS: [B, N, C + 1], DeepLab2's
          channel order, void last.
        - common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: [B, T, h, w, D], L2
          normalised (optional; no instance discrimination without it).
        - common.PRED_SEMANTIC_LOGITS: [B, T, hs, ws, C] (optional), at any
          resolution; the label is strided to it.
        - common.PRED_AUX_OUTPUTS: tuple of dicts with the mask and class
          logits keys (and the feature key), same shapes.
      sample_seed: Optional int32 [2] seed; when given, pixel sampling uses
        stateless random ops (reproducible), else `tf.random.uniform`.
      assignment: Optional float [B, M, N] matching that replaces the Hungarian
        one (1.0 where ground-truth mask m, in `build_targets` order, takes
        slot n): for analysis and for comparing with another implementation's
        matching.

    Returns:
      A dict of float32 [B] tensors, already weighted, auxiliary outputs added
      in:
        - common.PQ_STYLE_LOSS, common.MASK_ID_CROSS_ENTROPY_LOSS,
          common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS,
          common.TOTAL_LOSS (the sum of the four);
        - common.PQ_STYLE_LOSS_CLASS_TERM, common.PQ_STYLE_LOSS_MASK_DICE_TERM
          (the two parts of the PQ-style loss);
        - diagnostics, not in the total: common.LOSS_NUM_GT_MASKS,
          common.LOSS_MEAN_MATCHED_DICE, common.LOSS_MEAN_MATCHED_CLASS_PROB
          (main output, stop-gradient);
        - the per-output breakdown of the four terms above, under
          `output_term_key(i, term)` ('main/...', 'aux_0/...', ...).

    Raises:
      ValueError: If the prediction shapes do not agree with the label, the
        class count or the number of mask slots.
    """
    label = y_true[common.PANOPTIC_LABEL]
    targets = self.build_targets(label)
    label_shape = label.shape
    out_shape = [label_shape[1], -(-label_shape[2] // self.output_stride),
                 -(-label_shape[3] // self.output_stride)]

    outputs = [y_pred]
    if self.use_auxiliary_outputs:
      outputs += list(y_pred.get(common.PRED_AUX_OUTPUTS, ()) or ())
    for output in outputs:
      self._check_shapes(output, out_shape)

    matching = self._match(y_pred, targets, assignment)
    per_output = []
    for index, output in enumerate(outputs):
      terms = {}
      mask_logits = _flatten_pixels(
          output[common.PRED_PIXEL_SPACE_MASK_LOGITS])  # [B, P, N]
      if self.pq_style_loss_weight > 0.0:
        terms[common.PQ_STYLE_LOSS_CLASS_TERM] = self._pq_class_term(
            tf.cast(output[common.PRED_TRANSFORMER_CLASS_LOGITS], tf.float32),
            matching)
        terms[common.PQ_STYLE_LOSS_MASK_DICE_TERM] = self._pq_dice_term(
            mask_logits, targets, matching)
      if self.mask_id_cross_entropy_loss_weight > 0.0:
        terms[common.MASK_ID_CROSS_ENTROPY_LOSS] = self._mask_id_cross_entropy(
            mask_logits, targets, matching)
      feature = output.get(common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE)
      if self.instance_discrimination_loss_weight > 0.0 and feature is not None:
        seed = (None if sample_seed is None else
                tf.random.experimental.stateless_fold_in(sample_seed, index))
        terms[common.INSTANCE_DISCRIMINATION_LOSS] = self._instance_discrimination(
            _flatten_pixels(feature), targets, seed)
      per_output.append(terms)

    zeros = tf.zeros_like(matching['void_ratio'][:, 0])
    sums = {term: tf.add_n([terms.get(term, zeros) for terms in per_output])
            for term in _TERMS}
    semantic = zeros
    if (self.semantic_loss_weight > 0.0 and
        y_pred.get(common.PRED_SEMANTIC_LOGITS) is not None):
      semantic = self._semantic_loss(y_pred[common.PRED_SEMANTIC_LOGITS], label)

    pq_style = (sums[common.PQ_STYLE_LOSS_CLASS_TERM] +
                sums[common.PQ_STYLE_LOSS_MASK_DICE_TERM])
    num_masks = tf.cast(targets[clip_targets.NUM_MASKS], tf.float32)
    safe_count = tf.maximum(num_masks, 1.0)
    mask_valid = targets[clip_targets.MASK_VALID]
    breakdown = {output_term_key(index, term): value
                 for index, terms in enumerate(per_output)
                 for term, value in terms.items()}
    return {
        **breakdown,
        common.PQ_STYLE_LOSS: pq_style,
        common.MASK_ID_CROSS_ENTROPY_LOSS: sums[common.MASK_ID_CROSS_ENTROPY_LOSS],
        common.INSTANCE_DISCRIMINATION_LOSS:
            sums[common.INSTANCE_DISCRIMINATION_LOSS],
        common.SEMANTIC_LOSS: semantic,
        common.TOTAL_LOSS: (pq_style + sums[common.MASK_ID_CROSS_ENTROPY_LOSS] +
                            sums[common.INSTANCE_DISCRIMINATION_LOSS] + semantic),
        common.PQ_STYLE_LOSS_CLASS_TERM: sums[common.PQ_STYLE_LOSS_CLASS_TERM],
        common.PQ_STYLE_LOSS_MASK_DICE_TERM: sums[common.PQ_STYLE_LOSS_MASK_DICE_TERM],
        common.LOSS_NUM_GT_MASKS: num_masks,
        common.LOSS_MEAN_MATCHED_DICE: tf.reduce_sum(
            matching['matched_dice_per_slot'], axis=1) / safe_count,
        common.LOSS_MEAN_MATCHED_CLASS_PROB: tf.reduce_sum(
            matching['matched_class_prob'] * mask_valid, axis=1) / safe_count,
    }

  def _check_shapes(self, output: Mapping[str, tf.Tensor],
                    out_shape: Sequence[int]) -> None:
    """Raises ValueError when an output disagrees with the label or config."""
    mask_shape = output[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape
    if list(mask_shape[1:4]) != list(out_shape) or (
        mask_shape[4] != self.num_mask_slots):
      raise ValueError(
          f'{common.PRED_PIXEL_SPACE_MASK_LOGITS} has shape {mask_shape}; '
          f'expected [B, {out_shape[0]}, {out_shape[1]}, {out_shape[2]}, '
          f'{self.num_mask_slots}] (label downsampled by output_stride='
          f'{self.output_stride}, num_mask_slots={self.num_mask_slots}).')
    class_shape = output[common.PRED_TRANSFORMER_CLASS_LOGITS].shape
    if list(class_shape[1:]) != [self.num_mask_slots, self.num_classes + 1]:
      raise ValueError(
          f'{common.PRED_TRANSFORMER_CLASS_LOGITS} has shape {class_shape}; '
          f'expected [B, {self.num_mask_slots}, {self.num_classes + 1}].')

  def _match(self, y_pred: Mapping[str, tf.Tensor],
             targets: Mapping[str, tf.Tensor],
             assignment: Optional[tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Hungarian matching on the main output; all results stop-gradient.

    Returns:
      A dict with assignment [B, M, N] (1.0 on matched valid pairs),
      matched_dice_per_slot [B, N], matched_class_prob [B, M],
      slot_is_matched [B, N], slot_channel [B, N] (class channel of the
      matched mask) and void_ratio [B, N].
    """
    gt_mask = targets[clip_targets.PIXEL_MASK_ONE_HOT]  # [B, P, M]
    non_void = targets[clip_targets.PIXEL_NON_VOID]  # [B, P]
    mask_valid = targets[clip_targets.MASK_VALID]  # [B, M]
    mask_channel = tf.gather(tf.constant(self._class_channels, tf.int32),
                             targets[clip_targets.MASK_CLASS])  # [B, M]

    mask_logits = tf.stop_gradient(_flatten_pixels(
        y_pred[common.PRED_PIXEL_SPACE_MASK_LOGITS]))  # [B, P, N]
    mask_probs = tf.nn.softmax(mask_logits, axis=-1)
    # Crowd pixels stay in the predicted masks; only void leaves.
    dice = _matching_dice(gt_mask, mask_probs * non_void[..., tf.newaxis])
    class_probs = tf.nn.softmax(tf.stop_gradient(tf.cast(
        y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS], tf.float32)), axis=-1)
    class_probs = class_probs[..., :self.num_classes]  # [B, N, C], void dropped.
    gt_channel_one_hot = tf.one_hot(mask_channel, self.num_classes)  # [B, M, C]
    class_prob = tf.einsum('bmc,bnc->bmn', gt_channel_one_hot, class_probs)
    if assignment is None:
      # Padded ground-truth rows get a constant cost: whatever columns they
      # take, the valid rows still receive their optimal assignment.
      cost = -dice * class_prob * mask_valid[:, :, tf.newaxis]
      assignment = matchers.hungarian_matching(cost)
    assignment = tf.cast(assignment, tf.float32) * mask_valid[:, :, tf.newaxis]

    slot_channel = tf.cast(tf.einsum(
        'bmn,bm->bn', assignment, tf.cast(mask_channel, tf.float32)), tf.int32)
    # Share of each slot's soft mask that lies on void pixels.
    void_ratio = (tf.einsum('bpn,bp->bn', mask_probs, 1.0 - non_void) /
                  (tf.reduce_sum(mask_probs, axis=1) + _SIMILARITY_EPSILON))
    return {
        'assignment': assignment,
        'matched_dice_per_slot': tf.reduce_sum(dice * assignment, axis=1),
        'matched_class_prob': tf.reduce_sum(class_prob * assignment, axis=2),
        'slot_is_matched': tf.reduce_sum(assignment, axis=1),
        'slot_channel': slot_channel,
        'void_ratio': void_ratio,
    }

  def _pq_class_term(self, class_logits: tf.Tensor,
                     matching: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Focal (gamma 0) class cross-entropy of all slots. -> [B].

    DeepLab2's `FocalCrossEntropyLoss` with dynamic weights.
    """
    positive = matching['slot_is_matched'] > 0.0  # [B, N]
    target = tf.where(positive, matching['slot_channel'],
                      self.num_classes)  # Unmatched slots -> void.
    alpha = self.pq_focal_alpha
    weight = tf.where(
        positive,
        alpha * tf.maximum(matching['matched_dice_per_slot'], _MIN_LOSS_WEIGHT),
        (1.0 - alpha) * tf.maximum(matching['void_ratio'], _MIN_LOSS_WEIGHT))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=target, logits=class_logits)  # [B, N]
    return _mean_of_non_zero(cross_entropy * weight) * self.pq_style_loss_weight

  def _pq_dice_term(self, mask_logits: tf.Tensor,
                    targets: Mapping[str, tf.Tensor],
                    matching: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Smoothed dice loss of the matched slots, weighted by class prob. -> [B].

    DeepLab2's `MaskDiceLoss`: the predictions count only on pixels inside
    some ground-truth mask (void and crowd left out).
    """
    gt_mask = targets[clip_targets.PIXEL_MASK_ONE_HOT]  # [B, P, M]
    mask_probs = tf.nn.softmax(mask_logits, axis=-1)
    mask_probs *= targets[clip_targets.PIXEL_IN_MASK][..., tf.newaxis]
    # Slot probabilities reordered to ground-truth order: [B, P, M].
    matched_probs = tf.einsum('bpn,bmn->bpm', mask_probs, matching['assignment'])
    intersection = tf.reduce_sum(gt_mask * matched_probs, axis=1)  # [B, M]
    denominator = (tf.reduce_sum(gt_mask, axis=1) +
                   tf.reduce_sum(matched_probs, axis=1))
    dice = (2.0 * intersection + _DICE_SMOOTH) / (denominator + _DICE_SMOOTH)
    weight = targets[clip_targets.MASK_VALID] * tf.maximum(
        matching['matched_class_prob'], _MIN_LOSS_WEIGHT)
    return (tf.reduce_sum(weight * (1.0 - dice), axis=1) *
            (self.pq_style_loss_weight * self.pq_focal_alpha /
             self.num_mask_slots))

  def _mask_id_cross_entropy(self, mask_logits: tf.Tensor,
                             targets: Mapping[str, tf.Tensor],
                             matching: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Per-pixel cross-entropy against the matched slot. -> [B]."""
    # Ground-truth mask id -> matched slot, then per pixel.
    slot_of_mask = tf.argmax(matching['assignment'], axis=2, output_type=tf.int32)
    pixel_target_slot = tf.gather(
        slot_of_mask, tf.maximum(targets[clip_targets.PIXEL_MASK_ID], 0),
        batch_dims=1)  # [B, P]
    pixel_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=pixel_target_slot, logits=mask_logits)  # [B, P]
    # Void and crowd pixels have no ground-truth mask: zero, as in DeepLab2.
    pixel_ce *= targets[clip_targets.PIXEL_IN_MASK]
    return _mean_of_non_zero(pixel_ce) * self.mask_id_cross_entropy_loss_weight

  def _sample_k(self, num_pixels: int) -> int:
    sample_k = self.instance_discrimination_sample_k
    if sample_k > num_pixels:
      if not self._warned_sample_k:
        logging.warning(
            'instance_discrimination_sample_k=%d exceeds the %d pixels of a clip '
            'at the loss resolution; sampling all %d (DeepLab2 would fail).',
            sample_k, num_pixels, num_pixels)
        self._warned_sample_k = True
      sample_k = num_pixels
    return sample_k

  def _instance_discrimination(self, feature: tf.Tensor,
                               targets: Mapping[str, tf.Tensor],
                               sample_seed: Optional[tf.Tensor]) -> tf.Tensor:
    """Pixel contrastive loss on freshly sampled pixels; feature [B, P, D] -> [B].

    DeepLab2's `_call_pixel_contrastive_instance_discrimination_loss`.
    """
    num_pixels = feature.shape[1]
    logits = (tf.math.log(targets[clip_targets.PIXEL_INVERSE_MASK_AREA]) *
              self.instance_discrimination_sample_temperature +
              (1.0 - targets[clip_targets.PIXEL_NON_VOID]) *
              _SAMPLING_MASKING_CONSTANT)
    if sample_seed is None:
      uniform = tf.random.uniform(tf.shape(logits), minval=1e-20, maxval=1.0)
    else:
      uniform = tf.random.stateless_uniform(
          tf.shape(logits), seed=sample_seed, minval=1e-20, maxval=1.0)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    indices = tf.math.top_k(logits + gumbel, k=self._sample_k(num_pixels)).indices
    sampled_gt = tf.gather(targets[clip_targets.PIXEL_MASK_ONE_HOT], indices,
                           batch_dims=1)  # [B, K, M]
    same_mask = tf.einsum('bkm,bjm->bkj', sampled_gt, sampled_gt)
    target = same_mask / tf.maximum(
        tf.reduce_sum(same_mask, axis=-1, keepdims=True), 1.0)
    sampled_feature = tf.gather(feature, indices, batch_dims=1)  # [B, K, D]
    similarity = tf.einsum('bkd,bjd->bkj', sampled_feature, sampled_feature)
    similarity /= self.instance_discrimination_temperature
    cross_entropy = tf.nn.softmax_cross_entropy_with_logits(
        labels=target, logits=similarity)  # [B, K]
    return (_mean_of_non_zero(cross_entropy) *
            self.instance_discrimination_loss_weight)

  def _semantic_loss(self, semantic_logits: tf.Tensor,
                     panoptic_label: tf.Tensor) -> tf.Tensor:
    """Weighted softmax CE with top-k pixel mining, void ignored. -> [B]."""
    logits_shape = semantic_logits.shape  # [B, T, hs, ws, C]
    if (logits_shape[1] != panoptic_label.shape[1] or
        logits_shape[-1] != self.num_classes):
      raise ValueError(
          f'{common.PRED_SEMANTIC_LOGITS} has shape {logits_shape}; expected '
          f'[B, {panoptic_label.shape[1]}, h, w, {self.num_classes}].')
    semantic = clip_targets.semantic_targets(
        panoptic_label, logits_shape[2:4], num_classes=self.num_classes,
        ignore_label=self.ignore_label, label_divisor=self.label_divisor,
        thing_class_ids=self.thing_class_ids,
        small_instance_area=self.small_instance_area,
        small_instance_weight=self.small_instance_weight)
    logits = _flatten_pixels(semantic_logits)  # [B, P, C]
    num_pixels = logits.shape[1]
    labels = tf.reshape(semantic[clip_targets.SEMANTIC_LABEL], [-1, num_pixels])
    weight = tf.reshape(semantic[clip_targets.SEMANTIC_WEIGHT], [-1, num_pixels])
    valid = tf.not_equal(labels, self.ignore_label)
    pixel_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, labels, 0), logits=logits)
    pixel_ce *= weight * tf.cast(valid, tf.float32)
    if self.semantic_top_k_percent < 1.0:
      top_k = max(1, int(round(num_pixels * self.semantic_top_k_percent)))
      pixel_ce = tf.math.top_k(pixel_ce, k=top_k).values  # [B, k]
    return _mean_of_non_zero(pixel_ce) * self.semantic_loss_weight
