"""Tests for deeplab2_vkmax.model.transformer_decoder.kmax_transformer_decoder."""

import numpy as np
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model.transformer_decoder import kmax_transformer_decoder

_TINY = dict(num_classes=3, channels=16, num_heads=2, ffn_channels=32,
             pixel_space_head_channels=8, pixel_space_output_channels=4)


def _wake_residual_branches(layer):
  # Zero-init gammas make every update branch a no-op at initialisation.
  for weight in layer.weights:
    if weight.path.endswith('gamma') and not np.any(weight.numpy()):
      weight.assign(tf.ones_like(weight))


def test_memory_self_attention(check_layer):
  attention = kmax_transformer_decoder.MemorySelfAttention(
      num_heads=2, query_key_channels=4, value_channels=8)
  check_layer(attention, tf.random.normal([2, 5, 16]), (2, 5, 8))


def test_kmax_layer(check_layer):
  layer = kmax_transformer_decoder.KMaXTransformerLayer(**_TINY)
  inputs = {'pixel_feature': tf.random.normal([2, 2 * 3, 5, 12]),  # T=2
            'centers': tf.random.normal([2, 6, 16])}
  check_layer(layer, inputs, ((2, 6, 16), {
      common.PRED_PIXEL_SPACE_MASK_LOGITS: (2, 6, 5, 6),
      common.PRED_TRANSFORMER_CLASS_LOGITS: (2, 6, 4),
      # Per frame [B*T, h, w, D]: deep supervision's instance discrimination.
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: (4, 3, 5, 4)}), num_frames=2)


def test_kmeans_update_is_sum_over_assigned_pixels():
  layer = kmax_transformer_decoder.KMaXTransformerLayer(**_TINY)
  inputs = {'pixel_feature': tf.random.normal([1, 4, 4, 12], seed=7),
            'centers': tf.random.normal([1, 6, 16], seed=8)}
  layer(inputs)
  _wake_residual_branches(layer)
  base, _ = layer(inputs)
  # Duplicating the pixels doubles every cluster's sum (BN in inference mode
  # is affine), so the centres move; a mean would leave them unchanged.
  doubled = {'pixel_feature': tf.tile(inputs['pixel_feature'], [1, 2, 1, 1]),
             'centers': inputs['centers']}
  moved, _ = layer(doubled, num_frames=2)
  assert not np.allclose(base.numpy(), moved.numpy(), atol=1e-4)


def test_decoder_returns_one_aux_output_per_layer(check_layer):
  decoder = kmax_transformer_decoder.KMaXTransformerDecoder(
      num_mask_slots=6, block_counts=(1, 2, 1), **_TINY)
  features = [tf.random.normal([2, 2 * 2, 3, 24]),
              tf.random.normal([2, 2 * 3, 5, 12]),
              tf.random.normal([2, 2 * 5, 9, 12])]
  aux = lambda h, w: {common.PRED_PIXEL_SPACE_MASK_LOGITS: (2, h, w, 6),
                      common.PRED_TRANSFORMER_CLASS_LOGITS: (2, 6, 4),
                      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: (4, h // 2, w, 4)}
  check_layer(decoder, features, {
      'centers': (2, 6, 16), 'class_embedding': (2, 6, 16),
      'mask_embedding': (2, 6, 16),
      'aux_outputs': (aux(4, 3), aux(6, 5), aux(6, 5), aux(10, 9)),
  }, num_frames=2)
  assert decoder.cluster_centers.shape == (1, 6, 16)


def test_r50_decoder_matches_deeplab2_parameter_count():
  decoder = kmax_transformer_decoder.KMaXTransformerDecoder(num_classes=19)
  decoder.build([(None, None, None, c) for c in (2048, 1024, 512)])
  assert sum(int(tf.size(w)) for w in decoder.trainable_weights) == 11_571_684
