"""Tests for deeplab2_vkmax.model.post_processor.clip_post_processor."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model import class_order
from deeplab2_vkmax.model.post_processor import clip_post_processor

_DIV = 1000
_VOID = 255
_V = _VOID * _DIV
_HIGH = 10.0  # Logit of a slot that claims a pixel: prob ~ 1.
_EMPTY = -20.0  # Logit of a slot that claims nothing.


def _make_processor(**kwargs):
  options = dict(
      num_classes=3,
      label_divisor=_DIV,
      thing_class_ids=(1, 2),  # Class 0 is stuff.
      ignore_label=_VOID)
  options.update(kwargs)
  return clip_post_processor.ClipPostProcessor(**options)


# Class channels are in DeepLab2's order: things (1, 2), then stuff (0), void.
_CHANNEL = class_order.class_channels(3, (1, 2))


def _class_logits(rows):
  """[1, N, C+1] from rows of (class, logit) with the other entries 0."""
  logits = np.zeros((1, len(rows), 4), np.float32)
  for n, (cls, value) in enumerate(rows):
    logits[0, n, _CHANNEL[cls] if cls < 3 else cls] = value
  return logits


def _outputs(mask_logits, class_logits, embed_dim=3):
  num_slots = mask_logits.shape[-1]
  embeddings = np.arange(num_slots * embed_dim, dtype=np.float32).reshape(
      1, num_slots, embed_dim)
  return {
      common.PRED_PIXEL_SPACE_MASK_LOGITS: tf.constant(mask_logits),
      common.PRED_TRANSFORMER_CLASS_LOGITS: tf.constant(class_logits),
      common.PRED_QUERY_EMBEDDINGS: tf.constant(embeddings),
  }


def _scene():
  """Two frames of 5x5, 5 slots.

  Slot 0: stuff class 0, rows 3-4 of both frames.
  Slot 1: thing class 1, rows 0-1, cols 0-1 in frame 0 and cols 1-2 in frame 1.
  Slot 2: thing class 2, rows 0-1, cols 3-4 in both frames.
  Slot 3: thing class 1 at class confidence 0.5 (< 0.7), row 2 cols 0-1.
  Slot 4: confident class but empty mask.
  Elsewhere slots 0-3 tie at prob 0.25 < 0.4: void.
  """
  logits = np.zeros((1, 2, 5, 5, 5), np.float32)
  logits[..., 4] = _EMPTY
  logits[0, :, 3:, :, 0] = _HIGH
  logits[0, 0, :2, 0:2, 1] = _HIGH
  logits[0, 1, :2, 1:3, 1] = _HIGH
  logits[0, :, :2, 3:, 2] = _HIGH
  logits[0, :, 2, 0:2, 3] = _HIGH
  # Class 1 at logit log(3) + small: p = 3/6 ~ 0.5 among 4 entries.
  classes = _class_logits([(0, 10.), (1, 10.), (2, 10.), (1, np.log(3.0)),
                           (2, 10.)])
  return logits, classes


_A, _B, _S = 1 * _DIV + 2, 2 * _DIV + 3, 0  # Ids of slots 1, 2 and 0.
_EXPECTED_SCENE = np.array([
    [[_A, _A, _V, _B, _B],
     [_A, _A, _V, _B, _B],
     [_V, _V, _V, _V, _V],
     [_S, _S, _S, _S, _S],
     [_S, _S, _S, _S, _S]],
    [[_V, _A, _A, _B, _B],
     [_V, _A, _A, _B, _B],
     [_V, _V, _V, _V, _V],
     [_S, _S, _S, _S, _S],
     [_S, _S, _S, _S, _S]],
], np.int32)


@pytest.mark.parametrize('mode', ['maskwise', 'pixelwise'])
def test_scene_panoptic_segments_and_boxes(mode):
  logits, classes = _scene()
  result = _make_processor(post_processing=mode)(_outputs(logits, classes),
                                                 (5, 5))
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED].numpy()[0],
                                _EXPECTED_SCENE)
  np.testing.assert_array_equal(result[common.SEMANTIC_PRED].numpy()[0],
                                _EXPECTED_SCENE // _DIV)
  # The same thing id in both frames: one tube per slot.
  np.testing.assert_array_equal(result[common.SEGMENT_IDS].numpy(),
                                [[0, _A, _B, 0, 0]])
  np.testing.assert_array_equal(result[common.SEGMENT_CLASSES].numpy(),
                                [[0, 1, 2, _VOID, _VOID]])
  scores = result[common.SEGMENT_SCORES].numpy()[0]
  assert np.all(scores[:3] > 0.99)
  np.testing.assert_array_equal(scores[3:], [0.0, 0.0])
  np.testing.assert_array_equal(result[common.PRED_QUERY_EMBEDDINGS].numpy(),
                                _outputs(logits, classes)[
                                    common.PRED_QUERY_EMBEDDINGS].numpy())
  boxes = result[common.SEGMENT_BOXES].numpy()
  assert boxes.shape == (1, 2, 5, 4)
  np.testing.assert_allclose(boxes[0, 0, 1], [0.0, 0.0, 0.4, 0.4])
  np.testing.assert_allclose(boxes[0, 1, 1], [0.2, 0.0, 0.6, 0.4])
  np.testing.assert_allclose(boxes[0, :, 2], [[0.6, 0.0, 1.0, 0.4]] * 2)
  np.testing.assert_allclose(boxes[0, :, 0], [[0.0, 0.6, 1.0, 1.0]] * 2)
  np.testing.assert_array_equal(boxes[0, :, 3:], 0.0)


def test_single_frame_clip():
  logits, classes = _scene()
  result = _make_processor()(_outputs(logits[:, :1], classes), (5, 5))
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED].numpy()[0],
                                _EXPECTED_SCENE[:1])
  assert result[common.SEGMENT_BOXES].shape == (1, 1, 5, 4)


def _overlap_scene(b_own_cols):
  """One 4x6 frame; slots A (0) and B (1) both claim cols 0-1 at prob 0.5.

  A also owns col 2 alone; B owns `b_own_cols` alone. A's class confidence is
  ~1, B's 0.75, so with unit weights A (score 1 * 2/3) ranks above B (at most
  0.75 * 0.8), is pasted first and takes the shared columns.
  """
  logits = np.full((1, 1, 4, 6, 3), _EMPTY, np.float32)
  logits[..., 2] = 0.0  # Background slot, stuff with low confidence: dropped.
  logits[0, 0, :, 0:2, 0:2] = _HIGH  # Shared: 0.5 / 0.5.
  logits[0, 0, :, 2, 0] = _HIGH
  logits[0, 0, :, b_own_cols, 1] = _HIGH
  classes = _class_logits([(1, 12.), (2, np.log(9.0)), (0, 0.)])  # B: 9/12.
  return logits, classes


def test_overlap_resolved_by_rank_keeps_loser_remainder():
  # B covers cols 0-1 (shared) and 3-5 (own): 3/5 free >= 0.5.
  logits, classes = _overlap_scene(b_own_cols=slice(3, 6))
  result = _make_processor(overlapping_threshold=0.5)(
      _outputs(logits, classes), (4, 6))
  a, b = 1 * _DIV + 1, 2 * _DIV + 2
  expected = np.array([[a, a, a, b, b, b]] * 4, np.int32)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED].numpy()[0, 0],
                                expected)
  np.testing.assert_array_equal(result[common.SEGMENT_IDS].numpy(),
                                [[a, b, 0]])


def test_overlap_drops_mostly_covered_slot():
  # B covers cols 0-1 (shared) and 3 (own): 1/3 free < 0.8, B is dropped and its
  # own column stays void.
  logits, classes = _overlap_scene(b_own_cols=slice(3, 4))
  result = _make_processor()(_outputs(logits, classes), (4, 6))
  a = 1 * _DIV + 1
  expected = np.array([[a, a, a, _V, _V, _V]] * 4, np.int32)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED].numpy()[0, 0],
                                expected)
  np.testing.assert_array_equal(result[common.SEGMENT_IDS].numpy(),
                                [[a, 0, 0]])
  np.testing.assert_array_equal(result[common.SEGMENT_SCORES].numpy()[0, 1:],
                                [0.0, 0.0])


def test_rank_uses_mask_weight():
  # With a large mask weight B (mean mask prob 0.8: 0.5 on the shared columns, 1
  # on its own) outranks A (2/3) despite its lower class confidence: B takes the
  # overlap and A keeps its free third.
  logits, classes = _overlap_scene(b_own_cols=slice(3, 6))
  result = _make_processor(overlapping_threshold=0.3, reorder_mask_weight=10.0)(
      _outputs(logits, classes), (4, 6))
  # Maskwise instance ids are rank + 1 (DeepLab2): B ranks first.
  a, b = 1 * _DIV + 2, 2 * _DIV + 1
  expected = np.array([[b, b, a, b, b, b]] * 4, np.int32)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED].numpy()[0, 0],
                                expected)
  scores = result[common.SEGMENT_SCORES].numpy()[0]
  conf = tf.nn.softmax(classes[0], axis=-1).numpy()[:, :-1].max(axis=-1)
  probs = tf.nn.softmax(logits[0, 0], axis=-1).numpy().reshape(-1, 3)
  mean_prob = [probs[probs[:, n] > 0.4, n].mean() for n in range(2)]
  np.testing.assert_allclose(mean_prob, [2 / 3, 0.8], atol=1e-3)
  np.testing.assert_allclose(
      scores, [conf[0] * mean_prob[0]**10, conf[1] * mean_prob[1]**10, 0.0],
      rtol=1e-5)


def test_area_limits():
  logits, classes = _scene()
  # Things cover 8 pixels over the tube, stuff 20.
  result = _make_processor(thing_area_limit=9, stuff_area_limit=20)(
      _outputs(logits, classes), (5, 5))
  expected = np.where(_EXPECTED_SCENE == _S, _S, _V)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED].numpy()[0],
                                expected)
  result = _make_processor(thing_area_limit=8, stuff_area_limit=21)(
      _outputs(logits, classes), (5, 5))
  expected = np.where(_EXPECTED_SCENE == _S, _V, _EXPECTED_SCENE)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED].numpy()[0],
                                expected)


def test_all_void_when_nothing_confident():
  logits = np.zeros((1, 2, 3, 4, 4), np.float32)  # Uniform: 0.25 < 0.4.
  classes = _class_logits([(1, 10.)] * 4)
  result = _make_processor()(_outputs(logits, classes), (3, 4))
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED].numpy(), _V)
  np.testing.assert_array_equal(result[common.SEMANTIC_PRED].numpy(), _VOID)
  np.testing.assert_array_equal(result[common.SEGMENT_SCORES].numpy(), 0.0)
  np.testing.assert_array_equal(result[common.SEGMENT_BOXES].numpy(), 0.0)


def test_resize_aligns_corners():
  rng = np.random.default_rng(0)
  owner = rng.integers(0, 4, size=(1, 2, 3, 3))
  logits = np.where(np.eye(4, dtype=bool)[owner], _HIGH, 0.0).astype(np.float32)
  classes = _class_logits([(0, 10.), (1, 10.), (2, 10.), (1, 10.)])
  processor = _make_processor(post_processing='pixelwise')
  small = processor(_outputs(logits, classes), (3, 3))
  large = processor(_outputs(logits, classes), (5, 5))
  # Aligned corners: output grid points 0, 2, 4 are the input pixels 0, 1, 2.
  np.testing.assert_array_equal(
      large[common.PANOPTIC_PRED].numpy()[:, :, ::2, ::2],
      small[common.PANOPTIC_PRED].numpy())


@pytest.mark.parametrize('mode', ['maskwise', 'pixelwise'])
def test_tf_function_with_unknown_dims(mode):
  processor = _make_processor(post_processing=mode)

  @tf.function(
      input_signature=[
          tf.TensorSpec([None] * 5, tf.float32),
          tf.TensorSpec([None] * 3, tf.float32),
          tf.TensorSpec([None] * 3, tf.float32),
          tf.TensorSpec([], tf.int32),
          tf.TensorSpec([], tf.int32),
      ],
      jit_compile=False)
  def run(mask_logits, class_logits, embeddings, height, width):
    return processor(
        {
            common.PRED_PIXEL_SPACE_MASK_LOGITS: mask_logits,
            common.PRED_TRANSFORMER_CLASS_LOGITS: class_logits,
            common.PRED_QUERY_EMBEDDINGS: embeddings,
        }, (height, width))

  logits, classes = _scene()
  # Batch of two clips: the scene and the scene with frames swapped.
  logits = np.concatenate([logits, logits[:, ::-1]], axis=0)
  classes = np.concatenate([classes, classes], axis=0)
  embeddings = np.zeros((2, 5, 3), np.float32)
  result = run(logits, classes, embeddings, 5, 5)
  panoptic = result[common.PANOPTIC_PRED].numpy()
  np.testing.assert_array_equal(panoptic[0], _EXPECTED_SCENE)
  np.testing.assert_array_equal(panoptic[1], _EXPECTED_SCENE[::-1])
  assert result[common.SEGMENT_BOXES].shape == (2, 2, 5, 4)
  # Another size through the same trace.
  result = run(logits[:, :1], classes, embeddings, 9, 9)
  assert result[common.PANOPTIC_PRED].shape == (2, 1, 9, 9)


def test_invalid_mode_raises():
  with pytest.raises(ValueError, match='maskwise'):
    _make_processor(post_processing='boxwise')


def test_label_divisor_too_small_raises():
  logits, classes = _scene()
  with pytest.raises(ValueError, match='label_divisor'):
    _make_processor(label_divisor=5)(_outputs(logits, classes), (5, 5))
