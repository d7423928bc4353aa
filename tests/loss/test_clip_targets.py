"""Clip ground truth: thing tubes, stuff masks, void and crowd (docs/loss.md)."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax.model.loss import clip_targets as ct

from loss_test_utils import DIV, VOID, hand_built_clip

_KWARGS = dict(num_classes=4, ignore_label=255, label_divisor=DIV,
               thing_class_ids=[1, 2], num_mask_slots=6)


def test_hand_built_clip_masks():
  out = ct.build_clip_targets(tf.constant(hand_built_clip()), output_stride=1,
                              **_KWARGS)
  out = {k: v.numpy() for k, v in out.items()}
  # Keys sorted: road (0), car 1 (1001), person 1 (2001), sky (3000).
  assert out[ct.NUM_MASKS].tolist() == [4]
  np.testing.assert_array_equal(out[ct.MASK_CLASS][0], [0, 1, 2, 3, 0, 0])
  np.testing.assert_array_equal(out[ct.MASK_VALID][0], [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(out[ct.MASK_AREA][0], [9, 8, 2, 8, 0, 0])
  mask_id = out[ct.PIXEL_MASK_ID].reshape(2, 4, 4)  # Frames in (T, h, w) order.
  # The car is one tube: the same id in both frames.
  assert set(mask_id[0][:2, :2].ravel()) == {1}
  assert set(mask_id[1][:2, 1:3].ravel()) == {1}
  # Crowd person pixels and void pixels belong to no mask.
  np.testing.assert_array_equal(mask_id[0][2], [-1, -1, -1, -1])
  assert mask_id[1][2, 2] == -1 and mask_id[1][0, 3] == 0
  np.testing.assert_array_equal(out[ct.PIXEL_IN_MASK], mask_id.reshape(1, -1) >= 0)
  np.testing.assert_array_equal(out[ct.PIXEL_MASK_ONE_HOT].sum(-1),
                                out[ct.PIXEL_IN_MASK])
  # DeepLab2: crowd is not void; only the ignore label is.
  non_void = out[ct.PIXEL_NON_VOID].reshape(2, 4, 4)
  np.testing.assert_array_equal(non_void[0][2], [1, 1, 0, 0])
  assert non_void[1][2, 2] == 0 and non_void.sum() == 32 - 3
  # Inverse area: P / area for mask pixels, P for void and crowd.
  assert out[ct.PIXEL_INVERSE_MASK_AREA][0, 0] == pytest.approx(32 / 8)
  assert out[ct.PIXEL_INVERSE_MASK_AREA][0, 10] == pytest.approx(32.0)
  assert out[ct.PIXEL_INVERSE_MASK_AREA][0, 8] == pytest.approx(32.0)


def test_semantic_targets_keep_crowd_and_weigh_small_instances():
  out = ct.semantic_targets(tf.constant(hand_built_clip()), (4, 4),
                            small_instance_area=3, small_instance_weight=3.0,
                            **{k: v for k, v in _KWARGS.items() if k != 'num_mask_slots'})
  label = out[ct.SEMANTIC_LABEL].numpy()[0]
  weight = out[ct.SEMANTIC_WEIGHT].numpy()[0]
  # Crowd pixels keep their class, void -> 255.
  np.testing.assert_array_equal(label[0, 2], [2, 2, 255, 255])
  # Person 1 (2 pixels in frame 1) is below 3 pixels; the car (4 per frame),
  # the crowd (instance 0) and stuff keep weight 1. Areas count per frame.
  np.testing.assert_array_equal(weight[1, 2], [3.0, 3.0, 1.0, 1.0])
  assert weight.sum() == 32 + 2 * 2.0
  # Strided to the logits' size: 4 -> 2 takes rows 0 and 3 ((4 - 1) // 1).
  small = ct.semantic_targets(tf.constant(hand_built_clip()), (2, 2),
                              **{k: v for k, v in _KWARGS.items() if k != 'num_mask_slots'})
  np.testing.assert_array_equal(small[ct.SEMANTIC_LABEL].numpy()[0, 0],
                                [[1, 0], [3, 3]])
  np.testing.assert_array_equal(small[ct.SEMANTIC_WEIGHT].numpy(), 1.0)


def test_downsampling_is_strided_slicing_and_runs_in_graph():
  label = np.full((1, 2, 5, 9), 3000, np.int32)  # Sky everywhere...
  label[0, 1, 4, 8] = 1002  # ...but a car on a kept pixel (row 4, col 8).
  label[0, 1, 3, 7] = 2001  # A person on a dropped pixel.
  fn = tf.function(lambda x: ct.build_clip_targets(x, **_KWARGS))
  out = fn(tf.constant(label))
  assert out[ct.PIXEL_MASK_ID].shape == (1, 2 * 2 * 3)  # h = ceil(5/4) = 2.
  assert out[ct.NUM_MASKS].numpy().tolist() == [2]
  np.testing.assert_array_equal(out[ct.MASK_CLASS].numpy()[0, :2], [1, 3])


def test_too_many_masks_raises_with_count_and_limit():
  label = np.arange(8, dtype=np.int32).reshape(1, 1, 2, 4) + 1001  # 8 cars.
  kwargs = dict(_KWARGS, num_mask_slots=5)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'num_mask_slots=5[\s\S]*8'):
    ct.build_clip_targets(tf.constant(label), output_stride=1, **kwargs)


def test_all_void_clip():
  label = np.full((2, 2, 4, 4), VOID, np.int32)
  out = ct.build_clip_targets(tf.constant(label), output_stride=1, **_KWARGS)
  assert out[ct.NUM_MASKS].numpy().tolist() == [0, 0]
  assert out[ct.PIXEL_NON_VOID].numpy().sum() == 0
  assert out[ct.MASK_VALID].numpy().sum() == 0
