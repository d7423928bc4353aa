"""Tests for deeplab2_vkmax.model.clip_kmax."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model import clip_kmax

_HEIGHT, _WIDTH = 33, 65  # OS4 output 9 x 17.
_NUM_SLOTS = clip_kmax.tiny_model_kwargs()['num_mask_slots']


def _clip(batch, frames, seed=0):
  return tf.random.stateless_uniform([batch, frames, _HEIGHT, _WIDTH, 3],
                                     seed=[seed, 1], maxval=255.0)


def _wake_residual_branches(model):
  # Zero-init residual gammas make the k-means/attention/FFN updates no-ops at
  # initialisation; set them to one so the centres depend on the pixels.
  for weight in model.trainable_variables:
    if weight.path.endswith('gamma') and not np.any(weight.numpy()):
      weight.assign(tf.ones_like(weight))


@pytest.fixture(name='model', scope='module')
def model_fixture():
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
  model(_clip(1, 1))
  return model


def _expected_shapes(batch, frames, with_semantic=True, num_layers=3):
  tube = (batch, frames, 9, 17)
  shapes = {
      common.PRED_PIXEL_SPACE_MASK_LOGITS: tube + (_NUM_SLOTS,),
      common.PRED_TRANSFORMER_CLASS_LOGITS: (batch, _NUM_SLOTS, 4),
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: tube + (32,),
      common.PRED_QUERY_EMBEDDINGS: (batch, _NUM_SLOTS, 64),
      common.PRED_AUX_OUTPUTS: tuple(
          {common.PRED_PIXEL_SPACE_MASK_LOGITS: tube + (_NUM_SLOTS,),
           common.PRED_TRANSFORMER_CLASS_LOGITS: (batch, _NUM_SLOTS, 4),
           # Deep supervision carries the pixel feature (DeepLab2's aux outputs
           # feed instance discrimination too).
           common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: tube + (32,)}
          for _ in range(num_layers)),
  }
  if with_semantic:
    shapes[common.PRED_SEMANTIC_LOGITS] = tube + (3,)
  return shapes


def _shapes(outputs):
  return tf.nest.map_structure(lambda t: tuple(t.shape), outputs)


@pytest.mark.parametrize('frames', [1, 2])
@pytest.mark.parametrize('training', [False, True])
def test_output_shapes(model, frames, training):
  outputs = model(_clip(2, frames), training=training, auxiliary_outputs=True)
  assert _shapes(outputs) == _expected_shapes(2, frames)
  assert isinstance(outputs[common.PRED_AUX_OUTPUTS], tuple)


def test_inference_returns_only_what_it_uses_and_the_same_values(model):
  clip = _clip(1, 2, seed=5)
  full = model(clip, training=False, auxiliary_outputs=True)
  lean = model(clip)  # Inference default: no deep supervision, no semantic branch.
  assert set(lean) == set(full) - {common.PRED_AUX_OUTPUTS, common.PRED_SEMANTIC_LOGITS}
  for key, value in lean.items():
    np.testing.assert_array_equal(value.numpy(), full[key].numpy())
  # Training computes them by default (the loss reads them).
  assert set(model(clip, training=True)) == set(full)


def test_odd_input_sizes_round_up(model):
  outputs = model(tf.zeros([1, 2, 65, 129, 3]))
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape == (
      1, 2, 17, 33, _NUM_SLOTS)


def test_tf_function_matches_eager_with_unknown_shapes(model):
  clip = _clip(1, 2, seed=3)
  eager = model(clip, training=False)
  graph_fn = tf.function(
      lambda x: model(x, training=False),
      input_signature=[tf.TensorSpec([None, 2, None, None, 3], tf.float32)])
  graph = graph_fn(clip)
  for a, b in zip(tf.nest.flatten(graph), tf.nest.flatten(eager)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_get_config_round_trip(model):
  config = model.get_config()
  clone = clip_kmax.ClipKMaX.from_config(config)
  assert clone.get_config() == config
  clone(_clip(1, 2))  # An inference call builds every variable, the auxiliary ones too.
  full = clip_kmax.ClipKMaX.from_config(config)
  full(_clip(1, 2), auxiliary_outputs=True)
  def variables(m):  # Paths below the model's own (auto-numbered) name.
    return sorted((w.path.split('/', 1)[1], tuple(w.shape)) for w in m.weights)
  assert variables(clone) == variables(full)
  assert _shapes(clone(_clip(1, 2), auxiliary_outputs=True)) == _expected_shapes(1, 2)


@pytest.mark.slow  # About 15 s; the fast tier has test_cross_attention's per-option check.
def test_gradients_reach_every_trainable_variable():
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs())
  clip = _clip(2, 2, seed=5)
  model(clip)

  @tf.function
  def gradients(images):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      # Random linear weights: a sum of squares has an exactly-zero gradient
      # for the beta of a train-mode BN whose output feeds it directly.
      loss = tf.add_n([
          tf.reduce_mean(t * tf.random.stateless_normal(tf.shape(t), [i, 0]))
          for i, t in enumerate(tf.nest.flatten(outputs))])
    return tape.gradient(loss, model.trainable_variables)

  _wake_residual_branches(model)
  grads = gradients(clip)
  assert all(g is not None for g in grads)
  dead = [v.path for v, g in zip(model.trainable_variables, grads)
          if not np.any(tf.convert_to_tensor(g).numpy())]
  assert not dead


def test_clip_is_decoded_jointly_but_encoded_per_frame():
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs())
  clip = _clip(1, 2, seed=7)
  model(clip)
  _wake_residual_branches(model)

  # Encoder + pixel decoder: per frame, identical to each frame alone.
  frames = tf.reshape(clip / 127.5 - 1.0, [2, _HEIGHT, _WIDTH, 3])
  decoded_clip = model._pixel_decoder(model._encoder(frames))
  for t in range(2):
    decoded_alone = model._pixel_decoder(model._encoder(frames[t:t + 1]))
    for key, value in decoded_alone.items():
      np.testing.assert_allclose(decoded_clip[key][t:t + 1].numpy(),
                                 value.numpy(), rtol=1e-4, atol=1e-4)

  # Transformer decoder: one set of centres for the whole clip.
  joint = model(clip)
  for t in range(2):
    alone = model(clip[:, t:t + 1])
    assert not np.allclose(joint[common.PRED_QUERY_EMBEDDINGS].numpy(),
                           alone[common.PRED_QUERY_EMBEDDINGS].numpy(),
                           atol=1e-3)
    assert not np.allclose(
        joint[common.PRED_PIXEL_SPACE_MASK_LOGITS][:, t].numpy(),
        alone[common.PRED_PIXEL_SPACE_MASK_LOGITS][:, 0].numpy(), atol=1e-3)


def test_same_frame_twice_gives_identical_tube_frames(model):
  # Frames are stacked, never mixed by the per-frame heads or the aux resize.
  frame = _clip(1, 1, seed=11)
  outputs = model(tf.concat([frame, frame], axis=1), auxiliary_outputs=True)
  for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS,
              common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE,
              common.PRED_SEMANTIC_LOGITS):
    np.testing.assert_allclose(outputs[key][:, 0].numpy(),
                               outputs[key][:, 1].numpy(), atol=1e-5)
  for aux in outputs[common.PRED_AUX_OUTPUTS]:
    logits = aux[common.PRED_PIXEL_SPACE_MASK_LOGITS].numpy()
    np.testing.assert_allclose(logits[:, 0], logits[:, 1], atol=1e-5)


def test_os2_without_semantic_decoder_keeps_semantic_head():
  kwargs = dict(clip_kmax.tiny_model_kwargs(), decoder_output_stride=2,
                use_auxiliary_semantic_decoder=False)
  model = clip_kmax.ClipKMaX(**kwargs)
  outputs = model(_clip(1, 2), auxiliary_outputs=True)
  # DeepLab2's Cityscapes variant: the semantic head reads `stage5` directly,
  # and its logits stay at stride 32 (33 x 65 -> 2 x 3).
  assert outputs[common.PRED_SEMANTIC_LOGITS].shape == (1, 2, 2, 3, 3)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS].shape == (
      1, 2, 17, 33, _NUM_SLOTS)
  assert set(model.checkpoint_items) == {
      'encoder', 'pixel_decoder', 'transformer_decoder', 'pixel_space_head',
      'transformer_mask_head', 'transformer_class_head',
      'pixel_space_feature_batch_norm', 'pixel_space_mask_batch_norm',
      'semantic_head_without_last_layer', 'semantic_last_layer'}


def test_without_any_semantic_branch():
  kwargs = dict(clip_kmax.tiny_model_kwargs(),
                use_auxiliary_semantic_decoder=False,
                use_auxiliary_semantic_head=False)
  model = clip_kmax.ClipKMaX(**kwargs)
  outputs = model(_clip(1, 1), auxiliary_outputs=True)
  assert _shapes(outputs) == _expected_shapes(1, 1, with_semantic=False)
  assert set(model.checkpoint_items) == {
      'encoder', 'pixel_decoder', 'transformer_decoder', 'pixel_space_head',
      'transformer_mask_head', 'transformer_class_head',
      'pixel_space_feature_batch_norm', 'pixel_space_mask_batch_norm'}


def test_invalid_options_raise():
  with pytest.raises(ValueError, match='decoder_output_stride'):
    clip_kmax.ClipKMaX(num_classes=3, decoder_output_stride=8)
  with pytest.raises(ValueError, match='transformer_decoder_block_counts'):
    clip_kmax.ClipKMaX(num_classes=3, transformer_decoder_block_counts=(1, 1))


@pytest.mark.slow  # Slow tier: full-size build or a subprocess.
def test_r50_matches_deeplab2_checkpoint_and_parameter_counts(tmp_path, deeplab2_r50_keys):
  model = clip_kmax.ClipKMaX(num_classes=19)
  model(tf.zeros([1, 1, 65, 129, 3]))
  counts = {name: sum(int(tf.size(w)) for w in item.trainable_weights)
            for name, item in model.checkpoint_items.items()}
  assert counts == {
      'encoder': 23_508_032, 'pixel_decoder': 21_151_040,
      'transformer_decoder': 11_571_684, 'pixel_space_head': 105_856,
      'transformer_mask_head': 33_024, 'transformer_class_head': 5_140,
      'pixel_space_feature_batch_norm': 256, 'pixel_space_mask_batch_norm': 2,
      'semantic_decoder': 15_749_344,
      'semantic_head_without_last_layer': 72_960, 'semantic_last_layer': 4_883}
  assert sum(int(tf.size(w)) for w in model.trainable_variables) == 72_202_221
  checkpoint = tf.train.Checkpoint(
      global_step=tf.Variable(0, dtype=tf.int64), **model.checkpoint_items)
  path = checkpoint.save(str(tmp_path / 'ckpt'))
  saved = {name: shape for name, shape in tf.train.list_variables(path)
           if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}
  assert saved == deeplab2_r50_keys


@pytest.mark.slow  # Slow tier: full-size build or a subprocess.
def test_cityscapes_variant_matches_deeplab2_parameter_count():
  # DeepLab2 Cityscapes kMaX-R50: OS2 decoder, 256 slots, no semantic decoder.
  model = clip_kmax.ClipKMaX(num_classes=19, decoder_output_stride=2,
                             num_mask_slots=256,
                             use_auxiliary_semantic_decoder=False)
  model(tf.zeros([1, 1, 65, 129, 3]))
  assert sum(int(tf.size(w)) for w in model.trainable_variables) == 56_986_125


def test_class_logits_start_near_void_prior(model):
  probs = tf.nn.softmax(
      model(_clip(1, 1))[common.PRED_TRANSFORMER_CLASS_LOGITS]).numpy()
  np.testing.assert_allclose(probs[..., -1].mean(), 0.9, atol=0.02)


def test_training_with_drop_path_everywhere():
  kwargs = dict(clip_kmax.tiny_model_kwargs(), drop_path_keep_prob=0.5,
                pixel_decoder_drop_path_keep_prob=0.5,
                transformer_decoder_drop_path_keep_prob=0.5)
  model = clip_kmax.ClipKMaX(**kwargs)
  outputs = model(_clip(2, 2), training=True)
  assert _shapes(outputs) == _expected_shapes(2, 2)
  assert all(np.all(np.isfinite(t.numpy())) for t in tf.nest.flatten(outputs))
  # Inference ignores drop path: two calls agree.
  clip = _clip(1, 2, seed=2)
  np.testing.assert_array_equal(
      model(clip)[common.PRED_QUERY_EMBEDDINGS].numpy(),
      model(clip)[common.PRED_QUERY_EMBEDDINGS].numpy())


def test_checkpoint_items_round_trip(model, tmp_path):
  clip = _clip(1, 2, seed=13)
  expected = model(clip)
  path = tf.train.Checkpoint(**model.checkpoint_items).save(
      str(tmp_path / 'ckpt'))
  restored = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
  restored(clip)
  status = tf.train.Checkpoint(**restored.checkpoint_items).restore(path)
  status.assert_existing_objects_matched()
  for a, b in zip(tf.nest.flatten(restored(clip)), tf.nest.flatten(expected)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_semantic_decoder_without_head_raises():
  with pytest.raises(ValueError, match='use_auxiliary_semantic_head'):
    clip_kmax.ClipKMaX(num_classes=3, use_auxiliary_semantic_head=False)
