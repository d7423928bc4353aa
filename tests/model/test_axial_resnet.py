"""Tests for deeplab2_vkmax.model.pixel_encoder.axial_resnet."""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import dataset
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model.layers import axial_attention
from deeplab2_vkmax.model.layers import blocks
from deeplab2_vkmax.model.pixel_encoder import axial_resnet

_CONFIG = (pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'kitti_step'
           / 'clip_kmax_axial_r50_b1.textproto')
_TINY = dict(width_multiplier=0.125, block_counts=(1, 1, 2, 2))


def _params(layer):
  return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


def _deeplab2_axial_resnet50_parameters(heads=8, span=255):
  """Trainable parameters of DeepLab2's axial_resnet50, from its architecture.

  Written out from the architecture (not from our layers): conv kernels have no
  bias, every BN has gamma and beta; an axial block is 1x1 conv (2f) -> height
  and width attention (qkv kernel [2f, 4f], BN on qkv, BN on 3 similarities x
  heads, BN on 2 retrieved outputs x 2f, RPE tables of 2*span-1 rows for query
  and key (f/heads deep) and value (2f/heads deep)) -> 1x1 conv (4f).
  """
  def conv_bn(cin, cout, kernel=1):
    return kernel * kernel * cin * cout + 2 * cout

  def attention_axis(f):
    qkv = 4 * f
    rpe = (2 * span - 1) * (f // heads + f // heads + 2 * f // heads)
    return 2 * f * qkv + 2 * qkv + 2 * 3 * heads + 2 * 2 * 2 * f + rpe

  total = conv_bn(3, 64, 3) + conv_bn(64, 64, 3) + conv_bn(64, 128, 3)  # Stem.
  channels = 128
  for filters, count, input_stride in ((64, 3, 2), (128, 4, 4), (256, 6, 8),
                                       (512, 3, 16)):
    for block in range(count):
      stride = input_stride if block == 0 else 2 * input_stride
      if stride >= 16:
        total += (conv_bn(channels, 2 * filters) + 2 * attention_axis(filters)
                  + conv_bn(2 * filters, 4 * filters))
      else:
        total += (conv_bn(channels, filters) + conv_bn(filters, filters, 3)
                  + conv_bn(filters, 4 * filters))
      if block == 0:
        total += conv_bn(channels, 4 * filters)  # Projection shortcut.
      channels = 4 * filters
  return total


def test_tiny_axial_resnet_endpoints(check_layer):
  encoder = axial_resnet.AxialResNet(drop_path_keep_prob=0.8, **_TINY)
  images = tf.random.stateless_normal([2, 33, 65, 3], seed=[0, 1])
  expected = {
      'stage1': (2, 17, 33, 16), 'res1': (2, 17, 33, 16),
      'stage2': (2, 9, 17, 32), 'res2': (2, 9, 17, 32),
      'stage3': (2, 5, 9, 64), 'res3': (2, 5, 9, 64),
      'stage4': (2, 3, 5, 128), 'res4': (2, 3, 5, 128),
      'stage5': (2, 2, 3, 256), 'res5': (2, 2, 3, 256),
  }
  check_layer(encoder, images, expected)
  assert encoder.output_channels == {k: v[-1] for k, v in expected.items()}


def test_endpoints_are_pre_activation_like_deeplab2():
  # DeepLab2's order: 'stageN' is the sum before the activation (the next block
  # activates its input), 'resN' its GELU; the kMaX pixel decoder LayerNorms
  # the pre-activation 'stageN'.
  encoder = axial_resnet.AxialResNet(**_TINY)
  images = tf.random.stateless_normal([1, 33, 65, 3], seed=[2, 3])
  endpoints = encoder(images, training=False)
  for level in range(1, 6):
    stage = endpoints[f'stage{level}']
    np.testing.assert_allclose(endpoints[f'res{level}'], keras.activations.gelu(stage),
                               rtol=1e-5, atol=1e-6)
  # The stem ends with conv + BN, no activation (GELU >= -0.17 everywhere).
  assert float(tf.reduce_min(endpoints['stage1'])) < -0.2
  assert all(block.activate_input for stage in range(2, 6)
             for block in getattr(encoder, f'_stage{stage}')._blocks)


def test_block_layout_strides_and_drop_path_follow_deeplab2():
  encoder = axial_resnet.AxialResNet(width_multiplier=0.125,
                                     drop_path_keep_prob=0.6)
  layout = {stage: [(type(b).__name__, b.strides, round(b.drop_path_keep_prob, 6))
                    for b in getattr(encoder, f'_stage{stage}')._blocks]
            for stage in range(2, 6)}
  bottleneck, axial = 'BottleneckBlock', 'AxialBlock'
  # No max pool: every stage strides in its first block. Axial from input
  # stride 16; drop path from stride 16, keep 1 - 0.4 * 3/4 at stride 16 and
  # 0.6 at stride 32 (DeepLab2's linear schedule).
  assert layout[2] == [(bottleneck, 2, 1.0)] + [(bottleneck, 1, 1.0)] * 2
  assert layout[3] == [(bottleneck, 2, 1.0)] + [(bottleneck, 1, 1.0)] * 3
  assert layout[4] == [(bottleneck, 2, 1.0)] + [(axial, 1, 0.7)] * 5
  assert layout[5] == [(axial, 2, 0.7), (axial, 1, 0.6), (axial, 1, 0.6)]
  assert all(b.activation == 'gelu' for s in range(2, 6)
             for b in getattr(encoder, f'_stage{s}')._blocks)
  no_axial = axial_resnet.AxialResNet(axial_beyond_stride=0, **_TINY)
  assert not any(isinstance(b, blocks.AxialBlock) for s in range(2, 6)
                 for b in getattr(no_axial, f'_stage{s}')._blocks)


def test_axial_resnet50_matches_deeplab2_parameter_count():
  encoder = axial_resnet.AxialResNet()
  encoder.build((None, None, None, 3))
  # DeepLab2 pins 41,343,424 for axial_resnet50 (= max_deeplab_s_backbone).
  assert _deeplab2_axial_resnet50_parameters() == 41_343_424
  assert _params(encoder) == _deeplab2_axial_resnet50_parameters()


def test_gradients_reach_every_trainable_variable():
  encoder = axial_resnet.AxialResNet(**_TINY)
  images = tf.random.stateless_normal([1, 33, 33, 3], seed=[1, 1])
  encoder.build(images.shape)
  # Non-zero last-BN gammas, so every residual branch affects the output.
  for weight in encoder.trainable_weights:
    if weight.path.endswith('_conv3_bn/_batch_norm/gamma'):
      weight.assign(tf.ones_like(weight))
  with tf.GradientTape() as tape:
    endpoints = encoder(images, training=True)
    loss = tf.add_n([tf.reduce_sum(tf.square(endpoints[f'stage{s}']))
                     for s in range(1, 6)])
  grads = tape.gradient(loss, encoder.trainable_weights)
  missing = [w.path for w, g in zip(encoder.trainable_weights, grads)
             if g is None or not np.any(tf.convert_to_tensor(g).numpy())]
  assert not missing


def test_every_variable_is_checkpointed(tmp_path):
  encoder = axial_resnet.AxialResNet(**_TINY)
  encoder.build((None, 32, 32, 3))
  path = tf.train.Checkpoint(encoder=encoder).write(str(tmp_path / 'ckpt'))
  keys = {name for name, _ in tf.train.list_variables(path)}
  suffix = '/.ATTRIBUTES/VARIABLE_VALUE'
  assert len([k for k in keys if k.endswith(suffix)]) == len(encoder.weights)
  for key in ('encoder/_stem/_conv3_bn/_conv/kernel',
              'encoder/_stage4/_block1/_conv2_bn_act/_conv/kernel',
              'encoder/_stage5/_block1/_shortcut/_conv/kernel',
              'encoder/_stage5/_block2/_attention/_width_axis/qkv_kernel'):
    assert key + suffix in keys, key


def test_strided_axial_attention_subsamples_each_axis_after_attending():
  # Eval mode: the strided layer equals the unstrided one subsampled, since
  # each height column is attended at full length before rows are dropped.
  kwargs = dict(query_key_channels=8, value_channels=16, num_heads=2)
  strided = axial_attention.AxialAttention2D(strides=2, **kwargs)
  plain = axial_attention.AxialAttention2D(**kwargs)
  x = tf.random.stateless_normal([2, 7, 10, 6], seed=[3, 4])
  strided.build(x.shape)
  plain.build(x.shape)
  for source, target in zip(plain.weights, strided.weights):
    target.assign(tf.random.stateless_normal(source.shape, seed=[5, 6]) * 0.1
                  + (1.0 if 'variance' in source.path else 0.0))
    source.assign(target)
  out = strided(x, training=False)
  assert tuple(out.shape) == (2, 4, 5, 16)
  assert strided.compute_output_shape((2, 7, 10, 6)) == (2, 4, 5, 16)
  np.testing.assert_allclose(out.numpy(), plain(x)[:, ::2, ::2].numpy(),
                             rtol=1e-5, atol=1e-5)


def test_strided_axial_block(check_layer):
  block = blocks.AxialBlock(filters=8, num_heads=2, strides=2)
  x = tf.random.stateless_normal([2, 9, 6, 16], seed=[7, 8])
  check_layer(block, x, (2, 5, 3, 32))
  assert block._shortcut is not None and block._shortcut.strides == 2


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match='4 entries'):
    axial_resnet.AxialResNet(block_counts=(1, 1, 1))
  with pytest.raises(ValueError, match='axial_beyond_stride must be one of'):
    axial_resnet.AxialResNet(axial_beyond_stride=12)
  with pytest.raises(ValueError, match='not divisible by num_heads=8'):
    axial_resnet.AxialResNet(width_multiplier=0.1)


def test_clip_kmax_with_axial_resnet_encoder():
  kwargs = dict(clip_kmax.tiny_model_kwargs(num_classes=3),
                backbone_name='axial_resnet50', drop_path_keep_prob=0.8)
  model = clip_kmax.ClipKMaX(**kwargs)
  clip = tf.random.stateless_uniform([1, 2, 33, 65, 3], seed=[9, 9], maxval=255.0)
  outputs = model(clip, training=False, auxiliary_outputs=True)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape == (1, 2, 9, 17, 16)
  assert outputs[common.PRED_SEMANTIC_LOGITS].shape == (1, 2, 9, 17, 3)
  train_outputs = model(clip, training=True)
  assert train_outputs[common.PRED_TRANSFORMER_CLASS_LOGITS].shape == (1, 16, 4)
  assert isinstance(model.checkpoint_items['encoder'], axial_resnet.AxialResNet)
  config = model.get_config()
  assert clip_kmax.ClipKMaX.from_config(config).get_config() == config
  # The Inception stem gives an OS2 endpoint, so an OS2 decoder builds.
  os2 = clip_kmax.ClipKMaX(**dict(kwargs, decoder_output_stride=2))
  assert os2(clip)[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape == (1, 2, 17, 33, 16)


@pytest.mark.slow
def test_shipped_config_builds_the_full_model():
  config = config_lib.load_experiment_config(str(_CONFIG))
  assert config.model_options.backbone.name == 'axial_resnet50'
  descriptor = dataset.get_dataset_descriptor(config.train_dataset_options.dataset)
  model = builder.build_model(config, descriptor)
  outputs = model(tf.zeros([1, 2, 65, 129, 3]), training=False)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape == (1, 2, 17, 33, 128)
  # The same clip-kMaX as clip_kmax_r50 (72,202,221 parameters, 23,508,032 of
  # them its ResNet-50): the pixel and semantic decoders read endpoints of the
  # same channels, so only the encoder's parameters change.
  assert _params(model) == 72_202_221 - 23_508_032 + 41_343_424
