"""Tests for deeplab2_vkmax.model.pixel_encoder.convnext."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.pixel_encoder import convnext
from deeplab2_vkmax.protos import config_pb2

_TINY = dict(width_multiplier=0.125, depth_multiplier=0.34)


def _params(layer):
  return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


def test_tiny_convnext_shapes_modes_and_config(check_layer):
  encoder = convnext.ConvNeXt(drop_path_keep_prob=0.5, **_TINY)
  images = tf.random.stateless_normal([2, 65, 97, 3], seed=[0, 1])
  shapes = {}
  # DeepLab2's zero padding: stem (65 + 3 - 4) // 4 + 1 = 17, then each
  # downsampling (n + 1 - 2) // 2 + 1 = ceil(n / 2).
  for stage, (height, width, channels) in zip(
      range(1, 6), ((17, 25, 12), (17, 25, 12), (9, 13, 24), (5, 7, 48), (3, 4, 96))):
    shapes[f'stage{stage}'] = shapes[f'res{stage}'] = (2, height, width, channels)
  out = check_layer(encoder, images, shapes)
  assert encoder.output_channels == {k: v[-1] for k, v in shapes.items()}
  # Depth multiplier 0.34: one block per stage except 3 in stage 4 (9 * 0.34).
  assert encoder.stage_block_counts == (1, 1, 3, 1)
  # DeepLab2's endpoints: res<k> = GELU(stage<k>).
  np.testing.assert_allclose(out['res3'].numpy(), tf.nn.gelu(
      out['stage3'], approximate=False).numpy(), rtol=1e-6, atol=1e-6)


def test_zero_padding_for_downstream_pads_before_the_layer_norm():
  """The padded row enters each downsampling conv as the LayerNorm's beta."""
  encoder = convnext.ConvNeXt(**_TINY)
  plain = convnext.ConvNeXt(zero_padding_for_downstream=False, **_TINY)
  images = tf.random.stateless_normal([1, 65, 65, 3], seed=[5, 6])
  encoder.build(images.shape)
  plain.build(images.shape)
  rng = np.random.default_rng(0)
  for a, b in zip(encoder.weights, plain.weights):
    a.assign(rng.normal(0.0, 0.1, a.shape) + (1.0 if 'gamma' in a.path else 0.0))
    b.assign(a)
  padded = encoder(images, training=False)
  unpadded = plain(images, training=False)
  # Stem: 65 + 1 + 2 = 68 -> 17 rows on a grid shifted by one; 'valid' -> 16.
  assert padded['stage1'].shape == (1, 17, 17, 12)
  assert unpadded['stage1'].shape == (1, 16, 16, 12)
  # Stage 3 = its blocks applied to conv(LayerNorm(pad(stage2))): the padded
  # zeros become beta before the conv, not zeros after the LayerNorm.
  layer_norm, conv = encoder.downsample_layers[1]
  pad = lambda t: tf.pad(t, [[0, 0], [0, 1], [0, 1], [0, 0]])
  x = padded['stage2']
  pad_then_norm = conv(layer_norm(pad(x)))
  norm_then_pad = conv(pad(layer_norm(x)))
  assert pad_then_norm.shape[1] == 9  # ceil(17 / 2)
  np.testing.assert_allclose(encoder.stages[1][0](pad_then_norm, training=False).numpy(),
                             padded['stage3'].numpy(), rtol=1e-5, atol=1e-5)
  assert np.abs(pad_then_norm.numpy() - norm_then_pad.numpy()).max() > 1e-3


def test_block_is_identity_at_zero_layer_scale_and_drop_path_trains(check_layer):
  block = convnext.ConvNeXtBlock(filters=8, layer_scale_init=0.0,
                                 drop_path_keep_prob=0.5)
  x = tf.random.stateless_normal([4, 5, 5, 8], seed=[2, 3])
  out = check_layer(block, x, (4, 5, 5, 8))
  np.testing.assert_array_equal(out.numpy(), x.numpy())
  block.layer_scale.assign(tf.ones([1, 1, 1, 8]))
  dropped = [np.array_equal(block(x, training=True)[i].numpy(), x[i].numpy())
             for _ in range(5) for i in range(4)]
  assert any(dropped) and not all(dropped)  # Per sample: some dropped, some kept.


def test_stochastic_depth_is_linear_over_blocks():
  encoder = convnext.ConvNeXt(drop_path_keep_prob=0.6, **_TINY)
  keeps = [block.drop_path_keep_prob for stage in encoder.stages for block in stage]
  np.testing.assert_allclose(keeps, np.linspace(1.0, 0.6, 6))


def test_convnext_tiny_parameter_count():
  # ConvNeXt-T has 28,589,128 parameters (Keras Applications, include_top):
  # - 769,000 for the 1000-way classifier - 1,536 for the final LayerNorm
  # = 27,818,592 for the encoder, which is what kMaX uses ("27.8M").
  encoder = convnext.ConvNeXt(
      **dict(zip(('block_counts', 'widths'), convnext.VARIANTS['convnext_tiny'])))
  encoder.build((None, 64, 64, 3))
  assert _params(encoder) == 27_818_592


@pytest.mark.slow  # Slow tier: full-size build or a subprocess.
@pytest.mark.parametrize('name, expected', [
    ('convnext_small', 49_453_152), ('convnext_base', 87_564_416),
    ('convnext_large', 196_227_264)])
def test_larger_variants_parameter_counts(name, expected):
  # Liu et al.: 50M / 89M / 198M with the head; minus head and final LayerNorm.
  block_counts, widths = convnext.VARIANTS[name]
  encoder = convnext.ConvNeXt(block_counts=block_counts, widths=widths)
  encoder.build((None, 64, 64, 3))
  head = widths[-1] * 1000 + 1000 + 2 * widths[-1]
  assert _params(encoder) == expected
  assert _params(encoder) + head == pytest.approx(
      {'convnext_small': 50.2e6, 'convnext_base': 88.6e6,
       'convnext_large': 197.8e6}[name], rel=0.01)


def test_every_variable_is_checkpointed(tmp_path):
  encoder = convnext.ConvNeXt(**_TINY)
  encoder.build((None, 32, 32, 3))
  path = tf.train.Checkpoint(encoder=encoder).write(str(tmp_path / 'ckpt'))
  keys = [name for name, _ in tf.train.list_variables(path)
          if name != '_CHECKPOINTABLE_OBJECT_GRAPH']
  assert len(keys) == len(encoder.weights)
  # DeepLab2's kMaX ConvNeXt keys (tests/fidelity restores a DeepLab2 checkpoint).
  for key in ('encoder/stages/1/layer_with_weights-0/depthwise_conv/kernel',
              'encoder/stages/1/layer_with_weights-0/layer_scale',
              'encoder/downsample_layers/0/layer_with_weights-1/gamma',
              'encoder/downsample_layers/2/layer_with_weights-1/kernel'):
    assert key + '/.ATTRIBUTES/VARIABLE_VALUE' in keys, key
  assert isinstance(encoder.stages[1], checkpoint_naming.SequentialSlots)


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match='4 entries'):
    convnext.ConvNeXt(block_counts=(1, 1, 1))


def test_clip_kmax_with_convnext_encoder():
  kwargs = dict(clip_kmax.tiny_model_kwargs(num_classes=3), backbone_name='convnext_tiny')
  model = clip_kmax.ClipKMaX(**kwargs)
  outputs = model(tf.zeros([1, 2, 33, 65, 3]), training=False, auxiliary_outputs=True)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape == (1, 2, 9, 17, 16)
  assert outputs[common.PRED_SEMANTIC_LOGITS].shape == (1, 2, 9, 17, 3)
  assert isinstance(model.checkpoint_items['encoder'], convnext.ConvNeXt)
  config = model.get_config()
  clone = clip_kmax.ClipKMaX.from_config(config)
  assert clone.get_config() == config
  with pytest.raises(ValueError, match='needs an OS2 encoder endpoint'):
    clip_kmax.ClipKMaX(**dict(kwargs, decoder_output_stride=2))
  with pytest.raises(ValueError,
                     match=r"backbone_name must be one of \['axial_resnet50', 'convnext_base'"):
    clip_kmax.ClipKMaX(**dict(kwargs, backbone_name='convnext_huge'))


def test_builder_rejects_unknown_backbone_listing_valid_names():
  config = config_pb2.ExperimentOptions()
  config.model_options.backbone.name = 'resnet101'
  with pytest.raises(ValueError,
                     match=r"got \"resnet101\", expected one of \['axial_resnet50', 'convnext_base'"):
    builder.build_model(config, None)
