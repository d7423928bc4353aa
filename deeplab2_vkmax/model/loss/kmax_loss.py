"""The kMaX training objective applied to clip tubes (Video-kMaX).

method.md §2 fixes the losses; they are kMaX-DeepLab's (DeepLab2
`MaXDeepLabLoss` semantics) applied to a clip whose frames are stacked along
height, so one ground-truth mask is a whole thing tube or a stuff class of the
clip (paper Sec. 3.1: clip-kMaX adds "no extra ... loss functions").

Terms (each a per-example [B] float32 tensor, already weighted; auxiliary
outputs add into the same keys):
  - Hungarian matching from the MAIN output, cost
    -(dice(gt_mask, softmax_over_slots(mask_logits)) * P(gt_class | slot)),
    reused for every auxiliary output (method.md §2).
  - PQ-style loss (weight 3.0), MaX-DeepLab Eq. (10): a class term, focal
    cross-entropy (alpha 0.75, gamma 0) weighted by the stop-gradient matched
    dice for matched slots and by the stop-gradient fraction of the slot's mask
    that falls on void for unmatched slots (target: the void class), averaged
    over the N slots; and a mask term, dice loss over the softmax-over-slots
    masks of matched slots weighted by the stop-gradient matched class
    probability, summed over ground-truth masks and scaled by alpha / N so both
    terms share one normalisation (DeepLab2's `mask_dice_term_modifier`).
  - Mask-ID cross-entropy (0.3): per-pixel softmax cross-entropy over slots
    against the slot matched to the pixel's ground-truth mask; void ignored;
    averaged over non-void pixels.
  - Instance discrimination (1.0), CMT-DeepLab pixel contrastive loss: k
    non-void pixels sampled without replacement with probability ~ 1 / mask
    area (Gumbel top-k), target = row-normalised same-mask matrix, logits =
    cosine similarity of the normalised features / temperature. Averaged over
    non-void anchors; void samples (drawn only when a clip has fewer than k
    non-void pixels) are also masked out as negatives. Applied to every output
    that carries `PRED_PIXEL_SPACE_NORMALIZED_FEATURE` (usually the main one);
    the same sampled pixels serve all outputs.
  - Semantic loss (1.0): softmax cross-entropy on the auxiliary semantic head,
    void ignored, optional top-k percent pixel mining. Skipped when the model
    has no semantic head.

Void and crowd pixels: see `clip_targets.py` (crowd = void for mask losses).

A clip without any ground-truth mask (all void) gives exactly zero for every
term. This deviates from DeepLab2, whose class term would still push every slot
to the void class with weight = void ratio = 1; we take "void" to mean "no
supervision" here, so an unlabelled clip cannot pull the classifier towards
void.
"""

from typing import Any, Dict, Mapping, Optional, Sequence

import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model.loss import clip_targets
from deeplab2_vkmax.model.loss import matchers

# Lower bound of the stop-gradient loss weights (as DeepLab2): a weight of
# exactly zero would silently drop a term that should still count.
_MIN_LOSS_WEIGHT = 1e-5
# Added to the logits of void pixels before Gumbel top-k sampling; finite so
# that the noise cannot produce inf - inf.
_SAMPLING_MASKING_CONSTANT = -1e9


def _flatten_pixels(tensor: tf.Tensor) -> tf.Tensor:
  """[B, T, h, w, K] -> [B, T*h*w, K]: frames stacked along height, row-major."""
  _, clip_length, height, width, channels = tensor.shape
  # Losses run in float32 even when the model emits bfloat16/float16.
  tensor = tf.cast(tensor, tf.float32)
  return tf.reshape(tensor, [-1, clip_length * height * width, channels])


def _mask_dice(gt_mask: tf.Tensor, pred_mask: tf.Tensor) -> tf.Tensor:
  """Dice similarity between every ground-truth and every predicted mask.

  Args:
    gt_mask: A [B, P, M] float tensor of binary masks.
    pred_mask: A [B, P, N] float tensor of soft masks.

  Returns:
    A [B, M, N] float tensor; 0 where both masks are empty.
  """
  intersection = tf.einsum('bpm,bpn->bmn', gt_mask, pred_mask)
  denominator = (tf.reduce_sum(gt_mask, axis=1)[:, :, tf.newaxis] +
                 tf.reduce_sum(pred_mask, axis=1)[:, tf.newaxis, :])
  return tf.math.divide_no_nan(2.0 * intersection, denominator)


def _masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """Weighted mean over the last axis; 0 where all weights are 0. [B, K] -> [B]."""
  return tf.math.divide_no_nan(
      tf.reduce_sum(values * weights, axis=-1), tf.reduce_sum(weights, axis=-1))


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
               output_stride: int = 4,
               pq_style_loss_weight: float = 3.0,
               mask_id_cross_entropy_loss_weight: float = 0.3,
               instance_discrimination_loss_weight: float = 1.0,
               semantic_loss_weight: float = 1.0,
               semantic_top_k_percent: float = 1.0,
               instance_discrimination_sample_k: int = 4096,
               instance_discrimination_sample_temperature: float = 1.0,
               instance_discrimination_temperature: float = 0.3,
               pq_focal_alpha: float = 0.75,
               void_class_weight: float = 1.0,
               use_auxiliary_outputs: bool = True):
    """Initialises the loss.

    Args:
      num_classes: Number of thing + stuff classes C; the class logits have
        C + 1 channels, void last.
      ignore_label: Semantic id of void pixels.
      label_divisor: Panoptic label divisor.
      thing_class_ids: Semantic ids of thing classes.
      num_mask_slots: Number of mask slots N of the model (also the number of
        ground-truth mask slots of a clip).
      output_stride: Stride between the label and the predicted masks.
      pq_style_loss_weight: Weight of the PQ-style loss (both terms).
      mask_id_cross_entropy_loss_weight: Weight of the mask-ID cross-entropy.
      instance_discrimination_loss_weight: Weight of instance discrimination.
      semantic_loss_weight: Weight of the semantic loss.
      semantic_top_k_percent: Fraction in (0, 1] of the hardest pixels kept
        by the semantic loss.
      instance_discrimination_sample_k: Pixels sampled per clip (capped at
        the clip's pixel count).
      instance_discrimination_sample_temperature: Exponent on 1 / mask area
        of the sampling probability (1.0: probability ~ 1 / area).
      instance_discrimination_temperature: Softmax temperature of the
        feature similarities.
      pq_focal_alpha: Focal alpha: weight of matched (positive) class terms;
        unmatched (void-target) slots get 1 - alpha. Also scales the mask term.
      void_class_weight: Extra multiplier on the class term of unmatched slots
        (1.0 = DeepLab2).
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
    self.void_class_weight = void_class_weight
    self.use_auxiliary_outputs = use_auxiliary_outputs

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
        'void_class_weight': self.void_class_weight,
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
               sample_seed: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    """Computes the losses of one batch of clips.

    Args:
      y_true: {common.PANOPTIC_LABEL: int [B, T, H, W]} at crop resolution.
      y_pred: Model outputs:
        - common.PRED_PIXEL_SPACE_MASK_LOGITS: [B, T, h, w, N],
          h = ceil(H / output_stride), w = ceil(W / output_stride).
        - common.PRED_TRANSFORMER_CLASS_LOGITS: [B, N, C + 1], void last.
        - common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: [B, T, h, w, D], L2
          normalised (optional; no instance discrimination without it).
        - common.PRED_SEMANTIC_LOGITS: [B, T, h, w, C] (optional).
        - common.PRED_AUX_OUTPUTS: tuple of dicts with the mask and class
          logits keys (and optionally the feature key), same shapes.
      sample_seed: Optional int32 [2] seed; when given, pixel sampling uses
        stateless random ops (reproducible), else `tf.random.uniform`.

    Returns:
      A dict of float32 [B] tensors, already weighted, auxiliary outputs added
      in:
        - common.PQ_STYLE_LOSS, common.MASK_ID_CROSS_ENTROPY_LOSS,
          common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS,
          common.TOTAL_LOSS (the sum of the four);
        - diagnostics, not in the total: common.PQ_STYLE_LOSS_CLASS_TERM,
          common.PQ_STYLE_LOSS_MASK_DICE_TERM (the two parts of the PQ-style
          loss), common.LOSS_NUM_GT_MASKS, common.LOSS_MEAN_MATCHED_DICE,
          common.LOSS_MEAN_MATCHED_CLASS_PROB (main output, stop-gradient).

    Raises:
      ValueError: If the prediction shapes do not agree with the label, the
        class count or the number of mask slots.
    """
    targets = self.build_targets(y_true[common.PANOPTIC_LABEL])
    label_shape = y_true[common.PANOPTIC_LABEL].shape
    out_shape = [label_shape[1], -(-label_shape[2] // self.output_stride),
                 -(-label_shape[3] // self.output_stride)]

    outputs = [y_pred]
    if self.use_auxiliary_outputs:
      outputs += list(y_pred.get(common.PRED_AUX_OUTPUTS, ()) or ())
    for output in outputs:
      self._check_shapes(output, out_shape)

    gt_mask = targets[clip_targets.PIXEL_MASK_ONE_HOT]  # [B, P, M]
    non_void = targets[clip_targets.PIXEL_NON_VOID]  # [B, P]
    mask_valid = targets[clip_targets.MASK_VALID]  # [B, M]
    num_masks = tf.cast(targets[clip_targets.NUM_MASKS], tf.float32)  # [B]
    has_gt = tf.cast(num_masks > 0.0, tf.float32)

    matching = self._match(y_pred, targets)
    assignment = matching['assignment']  # [B, M, N]
    # Ground-truth mask id -> matched slot, then per pixel.
    slot_of_mask = tf.argmax(assignment, axis=2, output_type=tf.int32)
    pixel_target_slot = tf.gather(
        slot_of_mask, tf.maximum(targets[clip_targets.PIXEL_MASK_ID], 0),
        batch_dims=1)  # [B, P]

    sampled = None
    if self.instance_discrimination_loss_weight > 0.0:
      sampled = self._sample_pixels(targets, sample_seed)

    zeros = tf.zeros_like(num_masks)
    class_term, dice_term, mask_id_ce, instance_disc = zeros, zeros, zeros, zeros
    for output in outputs:
      mask_logits = _flatten_pixels(
          output[common.PRED_PIXEL_SPACE_MASK_LOGITS])  # [B, P, N]
      if self.pq_style_loss_weight > 0.0:
        class_term += self._pq_class_term(
            tf.cast(output[common.PRED_TRANSFORMER_CLASS_LOGITS], tf.float32),
            matching) * has_gt
        dice_term += self._pq_dice_term(mask_logits, gt_mask, non_void,
                                        assignment, matching) * has_gt
      if self.mask_id_cross_entropy_loss_weight > 0.0:
        pixel_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=pixel_target_slot, logits=mask_logits)  # [B, P]
        mask_id_ce += (_masked_mean(pixel_ce, non_void) *
                       self.mask_id_cross_entropy_loss_weight)
      feature = output.get(common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE)
      if sampled is not None and feature is not None:
        instance_disc += self._instance_discrimination(
            _flatten_pixels(feature), sampled)

    semantic = zeros
    if (self.semantic_loss_weight > 0.0 and
        y_pred.get(common.PRED_SEMANTIC_LOGITS) is not None):
      semantic = self._semantic_loss(y_pred[common.PRED_SEMANTIC_LOGITS],
                                     targets[clip_targets.SEMANTIC_LABEL])

    pq_style = class_term + dice_term
    safe_count = tf.maximum(num_masks, 1.0)
    return {
        common.PQ_STYLE_LOSS: pq_style,
        common.MASK_ID_CROSS_ENTROPY_LOSS: mask_id_ce,
        common.INSTANCE_DISCRIMINATION_LOSS: instance_disc,
        common.SEMANTIC_LOSS: semantic,
        common.TOTAL_LOSS: pq_style + mask_id_ce + instance_disc + semantic,
        common.PQ_STYLE_LOSS_CLASS_TERM: class_term,
        common.PQ_STYLE_LOSS_MASK_DICE_TERM: dice_term,
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
             targets: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Hungarian matching on the main output; all results stop-gradient.

    Returns:
      A dict with assignment [B, M, N] (1.0 on matched valid pairs),
      matched_dice_per_slot [B, N], matched_class_prob [B, M],
      slot_is_matched [B, N], slot_class [B, N] and void_ratio [B, N].
    """
    gt_mask = targets[clip_targets.PIXEL_MASK_ONE_HOT]  # [B, P, M]
    non_void = targets[clip_targets.PIXEL_NON_VOID]  # [B, P]
    mask_valid = targets[clip_targets.MASK_VALID]  # [B, M]
    mask_class = targets[clip_targets.MASK_CLASS]  # [B, M]

    mask_logits = tf.stop_gradient(_flatten_pixels(
        y_pred[common.PRED_PIXEL_SPACE_MASK_LOGITS]))  # [B, P, N]
    mask_probs = tf.nn.softmax(mask_logits, axis=-1)
    dice = _mask_dice(gt_mask, mask_probs * non_void[..., tf.newaxis])
    class_probs = tf.nn.softmax(tf.stop_gradient(tf.cast(
        y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS], tf.float32)), axis=-1)
    class_probs = class_probs[..., :self.num_classes]  # [B, N, C], void dropped.
    gt_class_one_hot = tf.one_hot(mask_class, self.num_classes)  # [B, M, C]
    class_prob = tf.einsum('bmc,bnc->bmn', gt_class_one_hot, class_probs)
    # Padded ground-truth rows get a constant cost: whatever columns they take,
    # the valid rows still receive their optimal assignment.
    cost = -dice * class_prob * mask_valid[:, :, tf.newaxis]
    assignment = matchers.hungarian_matching(cost)
    assignment *= mask_valid[:, :, tf.newaxis]  # [B, M, N]

    slot_is_matched = tf.reduce_sum(assignment, axis=1)  # [B, N]
    slot_class = tf.cast(tf.einsum(
        'bmn,bm->bn', assignment, tf.cast(mask_class, tf.float32)), tf.int32)
    # Share of each slot's (unmasked) soft mask that lies on void pixels.
    void_ratio = tf.math.divide_no_nan(
        tf.einsum('bpn,bp->bn', mask_probs, 1.0 - non_void),
        tf.reduce_sum(mask_probs, axis=1))
    return {
        'assignment': assignment,
        'matched_dice_per_slot': tf.reduce_sum(dice * assignment, axis=1),
        'matched_class_prob': tf.reduce_sum(class_prob * assignment, axis=2),
        'slot_is_matched': slot_is_matched,
        'slot_class': slot_class,
        'void_ratio': void_ratio,
    }

  def _pq_class_term(self, class_logits: tf.Tensor,
                     matching: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Focal (gamma 0) class cross-entropy of all slots. -> [B]."""
    positive = matching['slot_is_matched']  # [B, N]
    target = tf.where(positive > 0.0, matching['slot_class'],
                      self.num_classes)  # Unmatched slots -> void.
    alpha = self.pq_focal_alpha
    weight = (positive * alpha * tf.maximum(
        matching['matched_dice_per_slot'], _MIN_LOSS_WEIGHT) +
              (1.0 - positive) * (1.0 - alpha) * self.void_class_weight *
              tf.maximum(matching['void_ratio'], _MIN_LOSS_WEIGHT))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=target, logits=class_logits)  # [B, N]
    return (tf.reduce_mean(cross_entropy * weight, axis=1) *
            self.pq_style_loss_weight)

  def _pq_dice_term(self, mask_logits: tf.Tensor, gt_mask: tf.Tensor,
                    non_void: tf.Tensor, assignment: tf.Tensor,
                    matching: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Dice loss of matched slots, weighted by the matched class prob. -> [B]."""
    mask_probs = tf.nn.softmax(mask_logits, axis=-1) * non_void[..., tf.newaxis]
    # Slot probabilities reordered to ground-truth order: [B, P, M].
    matched_probs = tf.einsum('bpn,bmn->bpm', mask_probs, assignment)
    intersection = tf.reduce_sum(gt_mask * matched_probs, axis=1)  # [B, M]
    denominator = (tf.reduce_sum(gt_mask, axis=1) +
                   tf.reduce_sum(matched_probs, axis=1))
    dice = tf.math.divide_no_nan(2.0 * intersection, denominator)
    is_matched = tf.reduce_sum(assignment, axis=2)  # [B, M]
    weight = is_matched * tf.maximum(matching['matched_class_prob'],
                                     _MIN_LOSS_WEIGHT)
    return (tf.reduce_sum(weight * (1.0 - dice), axis=1) *
            (self.pq_style_loss_weight * self.pq_focal_alpha /
             self.num_mask_slots))

  def _sample_pixels(self, targets: Mapping[str, tf.Tensor],
                     sample_seed: Optional[tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Gumbel top-k sampling of pixels with probability ~ 1 / mask area.

    Returns:
      A dict with indices [B, K], target [B, K, K] (row-normalised same-mask
      matrix) and valid [B, K] (1.0 for non-void samples).
    """
    inverse_area = targets[clip_targets.PIXEL_INVERSE_MASK_AREA]  # [B, P]
    non_void = targets[clip_targets.PIXEL_NON_VOID]
    num_pixels = inverse_area.shape[1]
    sample_k = min(self.instance_discrimination_sample_k, num_pixels)
    logits = (tf.math.log(inverse_area) *
              self.instance_discrimination_sample_temperature +
              (1.0 - non_void) * _SAMPLING_MASKING_CONSTANT)
    tiny = 1e-20
    if sample_seed is None:
      uniform = tf.random.uniform(tf.shape(logits), minval=tiny, maxval=1.0)
    else:
      uniform = tf.random.stateless_uniform(
          tf.shape(logits), seed=sample_seed, minval=tiny, maxval=1.0)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    indices = tf.math.top_k(logits + gumbel, k=sample_k).indices  # [B, K]
    sampled_gt = tf.gather(targets[clip_targets.PIXEL_MASK_ONE_HOT], indices,
                           batch_dims=1)  # [B, K, M]
    same_mask = tf.einsum('bkm,bjm->bkj', sampled_gt, sampled_gt)
    target = same_mask / tf.maximum(
        tf.reduce_sum(same_mask, axis=-1, keepdims=True), 1.0)
    return {
        'indices': indices,
        'target': target,
        'valid': tf.gather(non_void, indices, batch_dims=1),
    }

  def _instance_discrimination(self, feature: tf.Tensor,
                               sampled: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Pixel contrastive loss on the sampled pixels; feature [B, P, D] -> [B]."""
    sampled_feature = tf.gather(feature, sampled['indices'],
                                batch_dims=1)  # [B, K, D]
    logits = tf.einsum('bkd,bjd->bkj', sampled_feature, sampled_feature)
    logits /= self.instance_discrimination_temperature
    # Void samples (only drawn when a clip has fewer than K non-void pixels)
    # are neither anchors nor negatives: void means no supervision.
    logits += (1.0 - sampled['valid'][:, tf.newaxis, :]) * (
        _SAMPLING_MASKING_CONSTANT)
    cross_entropy = -tf.reduce_sum(
        sampled['target'] * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    return (_masked_mean(cross_entropy, sampled['valid']) *
            self.instance_discrimination_loss_weight)

  def _semantic_loss(self, semantic_logits: tf.Tensor,
                     semantic_label: tf.Tensor) -> tf.Tensor:
    """Softmax CE with optional top-k pixel mining, void ignored. -> [B]."""
    if semantic_logits.shape[1:4] != semantic_label.shape[1:4]:
      raise ValueError(
          f'{common.PRED_SEMANTIC_LOGITS} has shape {semantic_logits.shape}; '
          f'expected [B, {", ".join(map(str, semantic_label.shape[1:4]))}, '
          f'{self.num_classes}] (the mask logits resolution).')
    logits = _flatten_pixels(semantic_logits)  # [B, P, C]
    labels = tf.reshape(semantic_label, [-1, logits.shape[1]])  # [B, P]
    valid = tf.not_equal(labels, self.ignore_label)
    valid_float = tf.cast(valid, tf.float32)
    pixel_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, labels, 0), logits=logits) * valid_float
    if self.semantic_top_k_percent >= 1.0:
      loss = _masked_mean(pixel_ce, valid_float)
    else:
      top_k = max(1, int(round(logits.shape[1] * self.semantic_top_k_percent)))
      hardest = tf.math.top_k(pixel_ce, k=top_k).values  # [B, k]
      count = tf.minimum(tf.reduce_sum(valid_float, axis=1), float(top_k))
      loss = tf.math.divide_no_nan(tf.reduce_sum(hardest, axis=1), count)
    return loss * self.semantic_loss_weight
