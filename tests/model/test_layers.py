"""Tests for deeplab2_vkmax.model.layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax.model.layers import axial_attention
from deeplab2_vkmax.model.layers import blocks
from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.model.layers import drop_path
from deeplab2_vkmax.model.layers import normalization
from deeplab2_vkmax.model.layers import resize

_IMAGE = tf.random.normal([2, 9, 17, 8], seed=1)
_SEQUENCE = tf.random.normal([2, 7, 8], seed=2)


@pytest.mark.parametrize('layer,inputs,expected', [
    (conv_bn_act.ConvBNAct(filters=4, kernel_size=3, strides=2,
                           activation='relu'), _IMAGE, (2, 5, 9, 4)),
    (conv_bn_act.ConvBNAct(filters=5, conv_type='1d', activation='gelu'),
     _SEQUENCE, (2, 7, 5)),
    (conv_bn_act.ConvBNAct(filters=3, use_bn=False, use_bias=True), _IMAGE,
     (2, 9, 17, 3)),
    (conv_bn_act.DepthwiseConvBNAct(kernel_size=5), _IMAGE, (2, 9, 17, 8)),
    (conv_bn_act.DepthwiseSeparableConvBNAct(filters=6), _IMAGE, (2, 9, 17, 6)),
    (conv_bn_act.SeparableConvBlock(filters=6), _IMAGE, (2, 9, 17, 6)),
    (normalization.AxisBatchNormalization(param_shape=(1, 1, 1, 8)), _IMAGE,
     (2, 9, 17, 8)),
    (drop_path.DropPath(keep_prob=0.5), _IMAGE, (2, 9, 17, 8)),
    (axial_attention.AxialAttention1D(query_key_channels=4, value_channels=8,
                                      num_heads=2, max_span=16),
     _SEQUENCE, (2, 7, 8)),
    (axial_attention.AxialAttention2D(query_key_channels=4, value_channels=6,
                                      num_heads=2, max_span=32),
     _IMAGE, (2, 9, 17, 6)),
    (blocks.BottleneckBlock(filters=4, strides=2), _IMAGE, (2, 5, 9, 16)),
    (blocks.BottleneckBlock(filters=2, activation='gelu'), _IMAGE,
     (2, 9, 17, 8)),
    (blocks.AxialBlock(filters=4, num_heads=2, max_span=32), _IMAGE,
     (2, 9, 17, 16)),
    (blocks.BlockStage(block_type='axial', num_blocks=2, filters=2,
                       num_heads=2, max_span=32, drop_path_keep_prob=0.8),
     _IMAGE, (2, 9, 17, 8)),
    (blocks.BlockStage(block_type='bottleneck', num_blocks=2, filters=4,
                       strides=2), _IMAGE, (2, 5, 9, 16)),
    (blocks.BlockStage(block_type='bottleneck', num_blocks=2, filters=4,
                       strides=2, activate_input=True, stride_on_1x1=True,
                       drop_path_keep_probs=(1.0, 0.5)), _IMAGE, (2, 5, 9, 16)),
])
def test_layer_shapes_modes_and_config(check_layer, layer, inputs, expected):
  check_layer(layer, inputs, expected)


def test_relative_positional_encoding_indexes_offsets(check_layer):
  rpe = axial_attention.RelativePositionalEncoding(max_span=8, depth=3)
  table = rpe(tf.constant(5)).numpy()
  assert table.shape == (5, 5, 3)
  embeddings = rpe.embeddings.numpy()
  assert embeddings.shape == (15, 3)
  # Entry (query i, key j) embeds the offset key - query (Axial-DeepLab's
  # r_{p-o}, DeepLab2's key_index - query_index), table row j - i + 7.
  for i in range(5):
    for j in range(5):
      np.testing.assert_array_equal(table[i, j], embeddings[j - i + 7])
  np.testing.assert_array_equal(table[0, 4], embeddings[11])
  clone = type(rpe).from_config(rpe.get_config())
  assert clone.get_config() == rpe.get_config()


def test_axial_attention_key_file_shapes():
  # DeepLab2's OS32 axial block: filters 512 -> qkv [1024, 2048], RPE 509.
  attention = axial_attention.AxialAttention1D(
      query_key_channels=512, value_channels=1024, num_heads=8, max_span=255)
  attention.build((None, None, 1024))
  shapes = {w.path.split('/', 1)[1]: tuple(w.shape) for w in attention.weights}
  assert shapes['qkv_kernel'] == (1024, 2048)
  assert shapes['_query_rpe/embeddings'] == (509, 64)
  assert shapes['_value_rpe/embeddings'] == (509, 128)
  assert shapes['_batch_norm_similarity/gamma'] == (3, 1, 8, 1, 1)
  assert shapes['_batch_norm_retrieved_output/gamma'] == (2, 1, 8, 1, 128)


def test_axis_batch_norm_normalises_over_unit_axes():
  layer = normalization.AxisBatchNormalization(param_shape=(3, 1, 1), epsilon=0.)
  x = tf.random.normal([3, 50, 4], mean=5.0, stddev=3.0, seed=3)
  y = layer(x, training=True).numpy()
  np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(y.std(axis=(1, 2)), 1.0, atol=1e-3)
  assert not np.allclose(layer.moving_mean.numpy(), 0.0)
  # Inference uses the moving statistics, not the batch's.
  y_eval = layer(x, training=False).numpy()
  assert not np.allclose(y_eval, y, atol=1e-2)


def test_drop_path_drops_whole_samples_only_in_training():
  layer = drop_path.DropPath(keep_prob=0.5)
  x = tf.ones([64, 3, 3, 2])
  np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
  y = layer(x, training=True).numpy()
  per_sample = y.reshape(64, -1)
  assert set(np.unique(per_sample)) <= {0.0, 2.0}
  assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
  assert 0 < (per_sample[:, 0] == 0).sum() < 64
  graph = tf.function(lambda v: layer(v, training=True))(x).numpy()
  assert set(np.unique(graph)) <= {0.0, 2.0}
  with pytest.raises(ValueError, match='keep_prob'):
    drop_path.DropPath(keep_prob=0.0)


def test_unknown_activation_and_block_type_raise():
  with pytest.raises(ValueError, match='valid'):
    conv_bn_act.ConvBNAct(filters=2, activation='swishy')
  with pytest.raises(ValueError, match='valid'):
    blocks.BlockStage(block_type='conv', num_blocks=1, filters=2)


def test_residual_blocks_start_as_identity_plus_shortcut():
  # Zero-gamma last BN: an equal-width block initially returns act(input).
  block = blocks.BottleneckBlock(filters=2, activation='relu')
  x = tf.random.normal([1, 5, 5, 8], seed=4)
  np.testing.assert_allclose(block(x, training=False).numpy(),
                             tf.nn.relu(x).numpy(), atol=1e-6)
  assert block._shortcut is None


def test_stack_and_unstack_frames_order():
  frames = tf.reshape(tf.range(2 * 3 * 2 * 4 * 1, dtype=tf.float32),
                      [2 * 3, 2, 4, 1])  # [B*T, h, w, C], B=2, T=3
  stacked = resize.stack_frames(frames, 3)
  stacked = stacked.numpy()
  assert stacked.shape == (2, 6, 4, 1)
  # Frame t of clip b occupies rows t*h:(t+1)*h.
  np.testing.assert_array_equal(stacked[1, 2:4], frames.numpy()[4])
  np.testing.assert_array_equal(resize.unstack_frames(stacked, 3).numpy(),
                                frames.numpy())


def test_checkpoint_names_follow_deeplab2(tmp_path):
  conv = conv_bn_act.SeparableConvBlock(filters=4)
  conv.build((None, None, None, 3))
  layers = checkpoint_naming.LayerList(
      [conv_bn_act.ConvBNAct(filters=2), conv_bn_act.ConvBNAct(filters=2)])
  for layer in layers:
    layer.build((None, None, None, 3))
  path = tf.train.Checkpoint(block=conv, stages=layers).save(
      str(tmp_path / 'ckpt'))
  names = {name for name, _ in tf.train.list_variables(path)}
  prefix = 'block/_conv1_bn_act/'
  assert (prefix + '_depthwise/_depthwise_conv/depthwise_kernel/'
          '.ATTRIBUTES/VARIABLE_VALUE') in names
  assert prefix + '_pointwise/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE' in names
  assert 'stages/1/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE' in names
  assert 'stages/1/_batch_norm/moving_mean/.ATTRIBUTES/VARIABLE_VALUE' in names


def _identity_batch_norms(layer):
  """Sets every BN of `layer` to the identity at inference."""
  for weight in layer.weights:
    name = weight.path.rsplit('/', 1)[-1]
    if name in ('gamma', 'moving_variance'):
      weight.assign(tf.ones_like(weight))
    elif name in ('beta', 'moving_mean'):
      weight.assign(tf.zeros_like(weight))


def test_axial_attention_follows_the_paper_formula():
  # Axial-DeepLab Eq. (4), one head: y_o = sum_p softmax_p(q_o k_p +
  # q_o r^q_{p-o} + k_p r^k_{p-o}) (v_p + r^v_{p-o}), offsets key minus query.
  length, span = 3, 4
  layer = axial_attention.AxialAttention1D(
      query_key_channels=1, value_channels=1, num_heads=1, max_span=span,
      bn_epsilon=1e-12)
  layer.build((None, length, 3))
  _identity_batch_norms(layer)
  layer.qkv_kernel.assign(tf.eye(3))  # q, k, v = the three input channels.
  offsets = np.arange(-(span - 1), span, dtype=np.float32)  # -3..3
  r_q, r_k, r_v = 0.5 * offsets, np.where(offsets > 0, 1.0, -1.0), offsets ** 2
  for rpe, table in ((layer._query_rpe, r_q), (layer._key_rpe, r_k),
                     (layer._value_rpe, r_v)):
    rpe.embeddings.assign(table[:, None].astype(np.float32))
  x = np.array([[[0.3, -1.0, 2.0], [1.5, 0.4, -0.5], [-0.7, 0.9, 1.0]]],
               np.float32)
  q, k, v = x[0, :, 0], x[0, :, 1], x[0, :, 2]
  expected = []
  for o in range(length):
    rel = [p - o + span - 1 for p in range(length)]
    logits = np.array([q[o] * k[p] + q[o] * r_q[rel[p]] + k[p] * r_k[rel[p]]
                       for p in range(length)])
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    expected.append(sum(weights[p] * (v[p] + r_v[rel[p]])
                        for p in range(length)))
  ours = layer(tf.constant(x), training=False).numpy()[0, :, 0]
  np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_strided_conv_pads_symmetrically():
  # DeepLab2's Conv2DSame: 3x3/2 on a 4x4 input pads 1 on every side, so the
  # first output sums the 2x2 top-left corner (Keras 'same' pads 0/1 and
  # would sum 3x3 = 9 ones).
  layer = conv_bn_act.ConvBNAct(filters=1, kernel_size=3, strides=2,
                                use_bn=False, kernel_initializer='ones')
  out = layer(tf.ones([1, 4, 4, 1])).numpy()[0, :, :, 0]
  np.testing.assert_array_equal(out, [[4.0, 6.0], [6.0, 9.0]])
  stem = conv_bn_act.ConvBNAct(filters=1, kernel_size=7, strides=2,
                               use_bn=False, kernel_initializer='ones')
  out = stem(tf.ones([1, 8, 8, 1])).numpy()[0, :, :, 0]
  assert out.shape == (4, 4)
  # 3 pad rows before: the first window sees 4x4 ones (Keras 'same', 2
  # before, would see 5x5); the last window sees rows / columns 3..7.
  assert out[0, 0] == 16.0 and out[-1, -1] == 25.0


@pytest.mark.parametrize('height,width', [(3, 5), (3, 9), (9, 5), (9, 9)])
@pytest.mark.parametrize('use_bias', [False, True])
def test_dilated_conv_without_padding_taps_equals_keras_conv(height, width, use_bias):
  # Rate 6 on a 3 x 5 map drops the outer rows and columns of the kernel, on
  # 3 x 9 (9 x 5) only the rows (columns), on 9 x 9 nothing: the output and
  # every gradient must equal Keras's own dilated conv with the same kernel.
  layer = conv_bn_act.ConvBNAct(filters=4, kernel_size=3, dilation_rate=6,
                                use_bn=False, use_bias=use_bias,
                                bias_initializer='random_normal')
  x = tf.random.stateless_normal([2, height, width, 3], seed=[1, height * width])
  layer(x)
  shortcut = layer._conv_without_padding_taps(x)
  assert (shortcut is None) == (height > 6 and width > 6)
  reference = keras.layers.Conv2D(4, 3, dilation_rate=6, padding='same', use_bias=use_bias)
  reference.build(x.shape)
  reference.set_weights(layer._conv.get_weights())

  def outputs_and_gradients(inputs):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(inputs)
      ours, theirs = layer(inputs), reference(inputs)
      ours_loss, theirs_loss = tf.reduce_sum(ours * ours), tf.reduce_sum(theirs * theirs)
    return (ours, tape.gradient(ours_loss, [inputs] + layer.trainable_weights),
            theirs, tape.gradient(theirs_loss, [inputs] + reference.trainable_weights))

  for fn in (outputs_and_gradients, tf.function(outputs_and_gradients)):
    ours, ours_grads, theirs, theirs_grads = fn(x)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)
    assert len(ours_grads) == len(theirs_grads) == 2 + use_bias
    for a, b in zip(ours_grads, theirs_grads):
      np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-4)


def test_activate_input_block_defers_the_activation():
  # DeepLab2: relu is applied to a block's input (shortcut included) and its
  # output is the sum before relu; along a chain this equals the
  # activate-output block run on relu(x).
  x = tf.random.normal([2, 5, 5, 8], seed=7)
  deferred = blocks.BottleneckBlock(filters=2, activate_input=True,
                                    last_bn_gamma_initializer='ones')
  immediate = blocks.BottleneckBlock(filters=2, last_bn_gamma_initializer='ones')
  deferred.build(x.shape)
  immediate.build(x.shape)
  for source, target in zip(deferred.weights, immediate.weights):
    target.assign(source)
  pre = deferred(x, training=False).numpy()
  assert pre.min() < 0.0
  np.testing.assert_allclose(np.maximum(pre, 0.0),
                             immediate(tf.nn.relu(x), training=False).numpy(),
                             atol=1e-5)


def test_block_stage_per_block_drop_path_and_stride_placement():
  stage = blocks.BlockStage(block_type='bottleneck', num_blocks=3, filters=4,
                            strides=2, stride_on_1x1=True,
                            drop_path_keep_probs=(1.0, 0.7, 0.5))
  assert [b._drop_path.keep_prob for b in stage._blocks] == [1.0, 0.7, 0.5]
  first = stage._blocks[0]
  assert first._conv1_bn_act._conv.strides == (2, 2)
  assert first._conv2_bn_act._conv.strides == (1, 1)
  with pytest.raises(ValueError, match='drop_path_keep_probs needs num_blocks=3'):
    blocks.BlockStage(block_type='bottleneck', num_blocks=3, filters=4,
                      drop_path_keep_probs=(1.0, 0.5))
