"""kMaX losses on tubes: hand-built cases with known behaviour (docs/loss.md)."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model import class_order
from deeplab2_vkmax.model.loss import clip_targets as ct
from deeplab2_vkmax.model.loss.kmax_loss import KMaXLoss

from loss_test_utils import VOID, hand_built_clip

_N = 8  # Mask slots.
_C = 4  # Classes: 0 road, 1 car, 2 person, 3 sky.
_D = 8  # Feature channels.
_MAIN_KEYS = (common.PQ_STYLE_LOSS, common.MASK_ID_CROSS_ENTROPY_LOSS,
              common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS,
              common.TOTAL_LOSS)
_SEED = tf.constant([1, 2], tf.int32)
# Class-logit channel of each class (DeepLab2's order: things 1, 2, then 0, 3).
_CHANNEL = class_order.class_channels(_C, [1, 2])


def _loss(**kwargs):
  options = dict(num_classes=_C, ignore_label=255, label_divisor=1000,
                 thing_class_ids=[1, 2], num_mask_slots=_N, output_stride=1)
  options.update(kwargs)
  return KMaXLoss(**options)


def _label(batch=1):
  return {common.PANOPTIC_LABEL: tf.constant(
      np.concatenate([hand_built_clip()] * batch), tf.int32)}


def _random_pred(rng, batch=1, t=2, h=4, w=4, num_aux=2, scale=1.0):
  def arr(*shape):
    return tf.constant(rng.normal(size=shape) * scale, tf.float32)
  pred = {
      common.PRED_PIXEL_SPACE_MASK_LOGITS: arr(batch, t, h, w, _N),
      common.PRED_TRANSFORMER_CLASS_LOGITS: arr(batch, _N, _C + 1),
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: tf.math.l2_normalize(
          arr(batch, t, h, w, _D), axis=-1),
      common.PRED_SEMANTIC_LOGITS: arr(batch, t, h, w, _C),
  }
  pred[common.PRED_AUX_OUTPUTS] = tuple(
      {common.PRED_PIXEL_SPACE_MASK_LOGITS: arr(batch, t, h, w, _N),
       common.PRED_TRANSFORMER_CLASS_LOGITS: arr(batch, _N, _C + 1)}
      for _ in range(num_aux))
  return pred


def _perfect_pred(loss, label, slot_of_mask=(5, 0, 3, 6), void_slot=7,
                  confidence=30.0):
  """Predictions that reproduce the label exactly, mask m in slot_of_mask[m]."""
  targets = loss.build_targets(label[common.PANOPTIC_LABEL])
  mask_id = targets[ct.PIXEL_MASK_ID].numpy()[0]  # [P]
  mask_class = targets[ct.MASK_CLASS].numpy()[0]
  slots = np.where(mask_id >= 0, np.array(slot_of_mask)[mask_id], void_slot)
  mask_logits = np.eye(_N)[slots] * confidence  # [P, N]
  class_logits = np.zeros((_N, _C + 1))
  class_logits[:, _C] = confidence  # Unused slots predict void.
  for m, slot in enumerate(slot_of_mask):
    class_logits[slot] = np.eye(_C + 1)[_CHANNEL[mask_class[m]]] * confidence
  feature = np.eye(_D)[np.where(mask_id >= 0, mask_id, _D - 1)]  # [P, D]
  semantic = ct.semantic_targets(
      label[common.PANOPTIC_LABEL], (4, 4), num_classes=_C, ignore_label=255,
      label_divisor=1000, thing_class_ids=[1, 2])[ct.SEMANTIC_LABEL].numpy().reshape(-1)
  semantic_logits = np.eye(_C)[np.minimum(semantic, _C - 1)] * confidence
  shape = (1, 2, 4, 4)
  pred = {
      common.PRED_PIXEL_SPACE_MASK_LOGITS: mask_logits.reshape(shape + (_N,)),
      common.PRED_TRANSFORMER_CLASS_LOGITS: class_logits[np.newaxis],
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: feature.reshape(
          shape + (_D,)),
      common.PRED_SEMANTIC_LOGITS: semantic_logits.reshape(shape + (_C,)),
  }
  pred = {k: tf.constant(v, tf.float32) for k, v in pred.items()}
  pred[common.PRED_AUX_OUTPUTS] = ()
  return pred


def _numpy(out):
  return {k: v.numpy() for k, v in out.items()}


def test_output_keys_shapes_and_total():
  out = _numpy(_loss()(_label(2), _random_pred(np.random.default_rng(0), 2),
                       sample_seed=_SEED))
  for key in _MAIN_KEYS:
    assert out[key].shape == (2,) and out[key].dtype == np.float32
    assert np.all(np.isfinite(out[key]))
  np.testing.assert_allclose(
      out[common.TOTAL_LOSS],
      sum(out[k] for k in _MAIN_KEYS if k != common.TOTAL_LOSS), rtol=1e-6)
  np.testing.assert_allclose(
      out[common.PQ_STYLE_LOSS], out[common.PQ_STYLE_LOSS_CLASS_TERM] +
      out[common.PQ_STYLE_LOSS_MASK_DICE_TERM], rtol=1e-6)
  np.testing.assert_array_equal(out[common.LOSS_NUM_GT_MASKS], [4, 4])


def test_perfect_prediction_gives_minimal_loss():
  loss = _loss()
  out = _numpy(loss(_label(), _perfect_pred(loss, _label()),
                    sample_seed=_SEED))
  assert out[common.PQ_STYLE_LOSS][0] < 1e-4
  assert out[common.MASK_ID_CROSS_ENTROPY_LOSS][0] < 1e-4
  assert out[common.SEMANTIC_LOSS][0] < 1e-4
  assert out[common.LOSS_MEAN_MATCHED_DICE][0] == pytest.approx(1.0, abs=1e-5)
  assert out[common.LOSS_MEAN_MATCHED_CLASS_PROB][0] == pytest.approx(1.0)
  # Instance discrimination cannot reach 0 at a finite temperature. With
  # orthogonal per-mask features (cosine 1 inside a mask, 0 across) and all 32
  # pixels sampled (sample_k clipped to the clip), an anchor in a mask of size
  # s has loss log(s + (32 - s) * exp(-1 / 0.3)): as in DeepLab2, crowd and void
  # pixels stay in every softmax; their own rows have no target (loss 0) and
  # do not count in the mean over the 27 non-zero rows.
  sizes = np.array([9, 8, 2, 8])  # road, car tube, person, sky.
  expected = np.sum(sizes * np.log(sizes + (32 - sizes) * np.exp(-1 / 0.3)))
  assert out[common.INSTANCE_DISCRIMINATION_LOSS][0] == pytest.approx(
      expected / 27, rel=1e-4)
  random = _numpy(loss(_label(), _random_pred(np.random.default_rng(1)),
                       sample_seed=_SEED))
  assert np.all(out[common.TOTAL_LOSS] < random[common.TOTAL_LOSS])


def test_permuting_slots_leaves_loss_unchanged():
  rng = np.random.default_rng(2)
  pred = _random_pred(rng, batch=2, scale=3.0)
  perm = rng.permutation(_N)

  def permute(output):
    output = dict(output)
    output[common.PRED_PIXEL_SPACE_MASK_LOGITS] = tf.gather(
        output[common.PRED_PIXEL_SPACE_MASK_LOGITS], perm, axis=-1)
    output[common.PRED_TRANSFORMER_CLASS_LOGITS] = tf.gather(
        output[common.PRED_TRANSFORMER_CLASS_LOGITS], perm, axis=1)
    return output

  permuted = permute(pred)
  permuted[common.PRED_AUX_OUTPUTS] = tuple(
      permute(aux) for aux in pred[common.PRED_AUX_OUTPUTS])
  loss = _loss()
  a = _numpy(loss(_label(2), pred, sample_seed=_SEED))
  b = _numpy(loss(_label(2), permuted, sample_seed=_SEED))
  for key in _MAIN_KEYS:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)


def test_void_pixels_do_not_change_pixel_losses():
  rng = np.random.default_rng(3)
  label = _label()
  void = (label[common.PANOPTIC_LABEL].numpy() == VOID)[..., np.newaxis]
  pred = _random_pred(rng)
  changed = dict(pred)
  for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS,
              common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE):
    noise = tf.math.l2_normalize(tf.random.normal(pred[key].shape), -1) * 5
    changed[key] = tf.where(void, noise, pred[key])
  changed[common.PRED_SEMANTIC_LOGITS] = tf.where(
      void, 9.0, pred[common.PRED_SEMANTIC_LOGITS])
  # The class term of unmatched slots is weighted by the void share of their
  # mask (by design), so only the class term may move. With sample_k below the
  # 29 non-void pixels, void pixels are never sampled.
  loss = _loss(use_auxiliary_outputs=False, instance_discrimination_sample_k=16)
  a = _numpy(loss(label, pred, sample_seed=_SEED))
  b = _numpy(loss(label, changed, sample_seed=_SEED))
  for key in (common.PQ_STYLE_LOSS_MASK_DICE_TERM,
              common.MASK_ID_CROSS_ENTROPY_LOSS,
              common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS,
              common.LOSS_MEAN_MATCHED_DICE):
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  # Void labels with different raw encodings are the same void.
  other_void = label[common.PANOPTIC_LABEL].numpy().copy()
  other_void[other_void == VOID] = 255 * 1000 + 7
  c = _numpy(loss({common.PANOPTIC_LABEL: tf.constant(other_void)}, pred,
                  sample_seed=_SEED))
  for key in _MAIN_KEYS:
    np.testing.assert_allclose(a[key], c[key], rtol=1e-6, err_msg=key)


def test_crowd_pixels_count_in_matching_but_not_in_dice_or_mask_id():
  """DeepLab2's crowd convention: non-void, but in no ground-truth mask."""
  rng = np.random.default_rng(3)
  label = _label()
  crowd = (label[common.PANOPTIC_LABEL].numpy() == 2000)[..., np.newaxis]
  pred = _random_pred(rng)
  changed = dict(pred)
  changed[common.PRED_PIXEL_SPACE_MASK_LOGITS] = tf.where(
      crowd, 8.0, pred[common.PRED_PIXEL_SPACE_MASK_LOGITS])
  loss = _loss(use_auxiliary_outputs=False)
  a = _numpy(loss(label, pred, sample_seed=_SEED))
  b = _numpy(loss(label, changed, sample_seed=_SEED))
  # Crowd pixels are in the predicted masks of the matching dice.
  assert abs(a[common.LOSS_MEAN_MATCHED_DICE][0] -
             b[common.LOSS_MEAN_MATCHED_DICE][0]) > 1e-4
  # With the matching held fixed, the dice term and mask-ID term ignore them.
  targets = loss.build_targets(label[common.PANOPTIC_LABEL])
  assignment = loss._match(pred, targets, None)['assignment']  # pylint: disable=protected-access
  fixed_a = _numpy(loss(label, pred, sample_seed=_SEED, assignment=assignment))
  fixed_b = _numpy(loss(label, changed, sample_seed=_SEED, assignment=assignment))
  for key in (common.MASK_ID_CROSS_ENTROPY_LOSS,):
    np.testing.assert_allclose(fixed_a[key], fixed_b[key], rtol=1e-6, err_msg=key)
  # The dice term's weights (matched class probabilities) do not depend on
  # the masks, so with the same matching it is unchanged too.
  np.testing.assert_allclose(fixed_a[common.PQ_STYLE_LOSS_MASK_DICE_TERM],
                             fixed_b[common.PQ_STYLE_LOSS_MASK_DICE_TERM], rtol=1e-6)
  # Crowd pixels are sampled and sit in every softmax of instance discrimination.
  features = dict(pred)
  features[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE] = tf.where(
      crowd, tf.math.l2_normalize(tf.ones_like(
          pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE]), -1),
      pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE])
  c = _numpy(loss(label, features, sample_seed=_SEED))
  assert abs(a[common.INSTANCE_DISCRIMINATION_LOSS][0] -
             c[common.INSTANCE_DISCRIMINATION_LOSS][0]) > 1e-4


def test_gradients_are_finite_and_reach_every_prediction():
  pred = _random_pred(np.random.default_rng(4))
  variables = {k: tf.Variable(v) for k, v in pred.items()
               if k != common.PRED_AUX_OUTPUTS}
  aux_vars = [{k: tf.Variable(v) for k, v in aux.items()}
              for aux in pred[common.PRED_AUX_OUTPUTS]]
  loss = _loss()
  with tf.GradientTape() as tape:
    out = loss(_label(), dict(variables, **{
        common.PRED_AUX_OUTPUTS: tuple(aux_vars)}), sample_seed=_SEED)
    total = tf.reduce_sum(out[common.TOTAL_LOSS])
  flat = list(variables.values()) + [v for a in aux_vars for v in a.values()]
  for grad in tape.gradient(total, flat):
    assert grad is not None
    assert np.all(np.isfinite(grad.numpy()))
    assert np.abs(grad.numpy()).max() > 0.0


def test_all_void_clip_trains_every_slot_towards_void_without_nan():
  """DeepLab2: no mask terms, but each slot's class term targets void."""
  label = {common.PANOPTIC_LABEL: tf.fill([2, 2, 4, 4], VOID)}
  pred = _random_pred(np.random.default_rng(5), batch=2)
  variables = tf.Variable(pred[common.PRED_TRANSFORMER_CLASS_LOGITS])
  with tf.GradientTape() as tape:
    out = _loss()(label, dict(pred, **{
        common.PRED_TRANSFORMER_CLASS_LOGITS: variables}))
  for key in (common.PQ_STYLE_LOSS_MASK_DICE_TERM, common.MASK_ID_CROSS_ENTROPY_LOSS,
              common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS):
    np.testing.assert_array_equal(out[key].numpy(), [0.0, 0.0], err_msg=key)
  class_term = out[common.PQ_STYLE_LOSS_CLASS_TERM].numpy()
  assert np.all(np.isfinite(class_term)) and np.all(class_term > 0.0)
  # Every slot's mask lies on void (void ratio ~1): the gradient raises void.
  grad = tape.gradient(out[common.TOTAL_LOSS], variables).numpy()
  assert np.all(np.isfinite(grad)) and np.all(grad[..., _C] < 0.0)


def test_losses_are_per_example():
  rng = np.random.default_rng(6)
  pred = _random_pred(rng, batch=2)
  labels = np.concatenate(
      [hand_built_clip(), np.full_like(hand_built_clip(), 3000)])  # 2nd: sky.
  both = _numpy(_loss()({common.PANOPTIC_LABEL: tf.constant(labels)}, pred,
                        sample_seed=_SEED))
  first_pred = tf.nest.map_structure(lambda x: x[:1], pred)
  first = _numpy(_loss()(_label(), first_pred, sample_seed=_SEED))
  for key in (common.PQ_STYLE_LOSS, common.MASK_ID_CROSS_ENTROPY_LOSS,
              common.SEMANTIC_LOSS):
    np.testing.assert_allclose(both[key][0], first[key][0], rtol=1e-5)
  assert both[common.LOSS_NUM_GT_MASKS].tolist() == [4, 1]


def test_auxiliary_outputs_add_into_the_same_keys():
  rng = np.random.default_rng(7)
  pred = _random_pred(rng, num_aux=0)
  main_only = dict(
      (k, pred[k]) for k in (common.PRED_PIXEL_SPACE_MASK_LOGITS,
                             common.PRED_TRANSFORMER_CLASS_LOGITS))
  with_aux = dict(pred, **{common.PRED_AUX_OUTPUTS: (main_only, main_only)})
  one = _numpy(_loss()(_label(), pred, sample_seed=_SEED))
  three = _numpy(_loss()(_label(), with_aux, sample_seed=_SEED))
  ignored = _numpy(_loss(use_auxiliary_outputs=False)(
      _label(), with_aux, sample_seed=_SEED))
  for key in (common.PQ_STYLE_LOSS, common.MASK_ID_CROSS_ENTROPY_LOSS):
    np.testing.assert_allclose(three[key], 3 * one[key], rtol=1e-5)
    np.testing.assert_allclose(ignored[key], one[key], rtol=1e-6)
  # Aux outputs without features add no instance discrimination.
  np.testing.assert_allclose(three[common.INSTANCE_DISCRIMINATION_LOSS],
                             one[common.INSTANCE_DISCRIMINATION_LOSS])


def test_semantic_top_k_and_missing_head():
  rng = np.random.default_rng(8)
  pred = _random_pred(rng)
  full = _numpy(_loss()(_label(), pred, sample_seed=_SEED))
  hard = _numpy(_loss(semantic_top_k_percent=0.25)(
      _label(), pred, sample_seed=_SEED))
  assert hard[common.SEMANTIC_LOSS][0] > full[common.SEMANTIC_LOSS][0]
  no_head = dict(pred)
  del no_head[common.PRED_SEMANTIC_LOGITS]
  skipped = _numpy(_loss()(_label(), no_head, sample_seed=_SEED))
  assert skipped[common.SEMANTIC_LOSS][0] == 0.0
  np.testing.assert_allclose(skipped[common.PQ_STYLE_LOSS],
                             full[common.PQ_STYLE_LOSS])


def test_tf_function_xla_and_stride_4_shapes():
  rng = np.random.default_rng(9)
  label = np.full((2, 2, 17, 33), 3000, np.int32)
  label[:, :, :8, :10] = 1001
  label[:, 1, 8:, 20:] = 2003
  label[:, :, 16] = VOID
  pred = _random_pred(rng, batch=2, h=5, w=9, num_aux=6)  # ceil(17/4) = 5.
  y_true = {common.PANOPTIC_LABEL: tf.constant(label)}
  loss = _loss(output_stride=4)
  eager = _numpy(loss(y_true, pred, sample_seed=_SEED))
  graph = _numpy(tf.function(
      lambda y, p: loss(y, p, sample_seed=_SEED))(y_true, pred))
  xla = _numpy(tf.function(lambda y, p: loss(y, p, sample_seed=_SEED),
                           jit_compile=True)(y_true, pred))
  for key in _MAIN_KEYS:
    np.testing.assert_allclose(eager[key], graph[key], rtol=1e-5)
    np.testing.assert_allclose(eager[key], xla[key], rtol=1e-4)


def test_bad_shapes_and_options_raise():
  pred = _random_pred(np.random.default_rng(10), h=3)
  with pytest.raises(ValueError, match='expected'):
    _loss()(_label(), pred)
  with pytest.raises(ValueError, match='semantic_top_k_percent'):
    _loss(semantic_top_k_percent=0.0)
  loss = _loss(pq_focal_alpha=0.5)
  assert KMaXLoss.from_config(loss.get_config()).get_config() == (
      loss.get_config())


def test_optimizing_free_logits_drives_pq_loss_down():
  rng = np.random.default_rng(11)
  pred = _random_pred(rng, num_aux=0, scale=0.1)
  mask_logits = tf.Variable(pred[common.PRED_PIXEL_SPACE_MASK_LOGITS])
  class_logits = tf.Variable(pred[common.PRED_TRANSFORMER_CLASS_LOGITS])
  loss = _loss(mask_id_cross_entropy_loss_weight=0.0,
               instance_discrimination_loss_weight=0.0,
               semantic_loss_weight=0.0)
  label = _label()

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      value = loss(label, {
          common.PRED_PIXEL_SPACE_MASK_LOGITS: mask_logits,
          common.PRED_TRANSFORMER_CLASS_LOGITS: class_logits,
      })[common.PQ_STYLE_LOSS]
    grads = tape.gradient(value, [mask_logits, class_logits])
    for var, grad in zip([mask_logits, class_logits], grads):
      var.assign_sub(50.0 * grad)  # Plain gradient descent.
    return value[0]

  first = float(step())
  for _ in range(100):
    last = float(step())
  assert last < 0.1 * first, (first, last)
