"""DeepLab2 training settings the reference packs (inference only) cannot check.

Each value below is DeepLab2's, read from its source and configs (named per test);
the loss-weight-per-output and optimiser facts are pinned in
tests/fidelity/test_dl2_loss.py (every `aux_<i>` term equals DeepLab2's, so each
deep-supervision output weighs as much as the main one) and
tests/trainer/test_optimizer_builder.py (AdamW decay rule, warm-up + poly
schedule, backbone learning-rate multiplier).
"""

import keras
import pytest

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax import builder
from deeplab2_vkmax.model.layers import drop_path
from dl2_packs import load_config


@pytest.fixture(name='model', scope='module')
def model_fixture():
  config = load_config('cityscapes_r50')
  model = builder.build_model(config, dataset_lib.get_dataset_descriptor(
      config.train_dataset_options.dataset))
  model.build((None, 1, 65, 129, 3))
  return model


def test_batch_and_layer_norm_settings(model):
  """SolverOptions defaults batchnorm_momentum 0.99, batchnorm_epsilon 1e-3
  (deeplab2/trainer.proto); LayerNorm epsilon 1e-6 in the pixel decoder."""
  batch_norms = [l for l in model._flatten_layers() if isinstance(  # pylint: disable=protected-access
      l, keras.layers.BatchNormalization)]
  layer_norms = [l for l in model._flatten_layers() if isinstance(  # pylint: disable=protected-access
      l, keras.layers.LayerNormalization)]
  assert len(batch_norms) > 150 and len(layer_norms) == 5
  # Proto floats are float32: compare at that precision.
  assert {(round(bn.momentum, 6), round(bn.epsilon, 9)) for bn in batch_norms} == {
      (0.99, 1e-3)}
  assert {ln.epsilon for ln in layer_norms} == {1e-6}


def test_drop_path_in_training(model):
  """kmax_deeplab.py: transformer decoder keep 0.8 (all but ADE20K), pixel
  decoder 1.0; the Cityscapes R50 encoder keeps 1.0 (its config)."""
  def keeps(item):
    layer = model.checkpoint_items[item]
    return {round(float(d.keep_prob), 6) for d in layer._flatten_layers()  # pylint: disable=protected-access
            if isinstance(d, drop_path.DropPath)}
  assert keeps('transformer_decoder') == {0.8}
  assert keeps('pixel_decoder') == {1.0}
  assert keeps('encoder') == {1.0}
