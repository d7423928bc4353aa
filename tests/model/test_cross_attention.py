"""The Table 4 cross-attention baselines of the kMaX layer (standard, latent memory)."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model.transformer_decoder import kmax_transformer_decoder as decoder

_FRAMES, _HEIGHT, _WIDTH, _CHANNELS, _SLOTS = 2, 3, 4, 16, 5


def test_multi_head_attention_is_a_softmax_over_every_position():
  rng = np.random.default_rng(0)
  query, key, value = (rng.normal(size=(2, n, 8)).astype(np.float32) for n in (3, 7, 7))
  got = decoder._multi_head_attention(tf.constant(query), tf.constant(key),
                                      tf.constant(value), num_heads=2).numpy()
  expected = np.zeros_like(got)
  for head in range(2):
    part = slice(4 * head, 4 * head + 4)
    logits = np.einsum('bnd,bld->bnl', query[..., part], key[..., part]) / 2.0
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected[..., part] = np.einsum('bnl,bld->bnd', weights, value[..., part])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _layer_and_inputs(cross_attention):
  layer = decoder.KMaXTransformerLayer(
      num_classes=3, channels=_CHANNELS, num_heads=2, ffn_channels=32,
      pixel_space_head_channels=16, pixel_space_output_channels=8,
      cross_attention=cross_attention, latent_memory_size=4)
  pixels = tf.random.stateless_normal([1, _FRAMES * _HEIGHT, _WIDTH, _CHANNELS], [1, 2])
  centers = tf.random.stateless_normal([1, _SLOTS, _CHANNELS], [3, 4])
  layer({'pixel_feature': pixels, 'centers': centers}, num_frames=_FRAMES)
  for weight in layer.weights:  # Wake the zero-gamma residual branches.
    if weight.path.endswith(('_kmeans_memory_conv3_bn/_batch_norm/gamma',
                             '_memory_ffn_conv2_bn/_batch_norm/gamma')):
      weight.assign(tf.ones_like(weight))
  return layer, pixels, centers


def _center_pixel_gradients(cross_attention):
  """|d centre n / d pixel l| summed over channels: [N, T*h*w], and the argmax owner."""
  layer, pixels, centers = _layer_and_inputs(cross_attention)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(pixels)
    out, aux = layer({'pixel_feature': pixels, 'centers': centers}, num_frames=_FRAMES,
                     training=False)
    rows = [tf.reduce_sum(out[0, n]) for n in range(_SLOTS)]
  grads = np.stack([np.abs(tape.gradient(r, pixels).numpy()).sum(-1).reshape(-1)
                    for r in rows])
  owner = np.argmax(aux['pixel_space_mask_logits'].numpy().reshape(-1, _SLOTS), -1)
  return grads, owner


def test_standard_cross_attention_reads_every_clip_pixel_kmeans_only_its_cluster():
  grads, _ = _center_pixel_gradients('standard')
  # Softmax over all T*h*w positions of both frames: every centre depends on
  # every pixel of the clip.
  assert grads.shape == (_SLOTS, _FRAMES * _HEIGHT * _WIDTH)
  assert np.all(grads > 0)
  grads, owner = _center_pixel_gradients('kmeans')
  # k-means argmax: a centre's update sums the pixels assigned to it only.
  for n in range(_SLOTS):
    assert np.all(grads[n, owner != n] == 0)
    assert np.all(grads[n, owner == n] > 0)


def test_each_baseline_has_its_own_variables_and_kmeans_none_of_them():
  names = {option: {w.path.split('/')[-2] if w.path.endswith(('kernel', 'gamma', 'beta'))
                    else w.path.split('/')[-1] for w in _layer_and_inputs(option)[0].weights}
           for option in decoder.CROSS_ATTENTIONS}
  baseline_only = {'_cross_query_conv_bn', '_cross_key_conv_bn', '_latent_query_conv_bn',
                   '_latent_value_conv_bn', 'latent_memory'}
  assert not any(n.startswith(tuple(baseline_only)) for n in names['kmeans'])
  assert 'latent_memory' in names['latent_memory']
  assert not any('latent' in n for n in names['standard'])


def test_unknown_cross_attention_is_refused():
  with pytest.raises(ValueError, match="cross_attention must be one of"):
    decoder.KMaXTransformerLayer(num_classes=3, cross_attention='dot')


@pytest.mark.parametrize('cross_attention', decoder.CROSS_ATTENTIONS)
def test_model_with_each_option_builds_and_reaches_every_variable(cross_attention):
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(),
                             transformer_cross_attention=cross_attention)
  clip = tf.random.stateless_uniform([1, 2, 33, 65, 3], [5, 6], maxval=255.0)
  model(clip)
  for weight in model.trainable_weights:  # Wake the zero-gamma residual branches.
    if weight.path.endswith('_conv3_bn/_batch_norm/gamma') or weight.path.endswith(
        '_ffn_conv2_bn/_batch_norm/gamma'):
      weight.assign(tf.ones_like(weight))
  with tf.GradientTape() as tape:
    outputs = model(clip, training=True)
    loss = tf.add_n([tf.reduce_mean(t * tf.random.stateless_normal(tf.shape(t), [i, 0]))
                     for i, t in enumerate(tf.nest.flatten(outputs))])
  grads = tape.gradient(loss, model.trainable_variables)
  dead = [v.path for v, g in zip(model.trainable_variables, grads)
          if g is None or not np.any(tf.convert_to_tensor(g).numpy())]
  assert not dead
