"""Session fixtures shared by every test directory: one tiny export per run."""

import pytest

import vkmax_testing


@pytest.fixture(scope='session')
def tiny_export(tmp_path_factory):
  """(SavedModel dir, in-process export module) of a tiny untrained clip-kMaX."""
  import keras
  import tensorflow as tf
  from deeplab2_vkmax import export_model
  from deeplab2_vkmax.data import dataset as dataset_lib
  from deeplab2_vkmax import builder
  from deeplab2_vkmax.model import clip_kmax

  # Keras 3 initialisers follow keras.utils.set_random_seed (not tf.random's seed);
  # seed 3 gives the untrained model several stuff and thing segments per frame.
  keras.utils.set_random_seed(3)
  config = vkmax_testing.tiny_config()
  descriptor = dataset_lib.get_dataset_descriptor('synthetic')
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=6))
  model(tf.zeros([1, 2, 65, 129, 3]), training=False)
  post_processor = builder.build_post_processor(config, descriptor)
  path = str(tmp_path_factory.mktemp('tiny_export') / 'saved_model')
  export_model.export_saved_model(model, post_processor, config, path)
  module = export_model.ClipKMaXExportModule(model, post_processor)
  return path, module


@pytest.fixture(scope='session')
def keras_predictor(tiny_export):
  """A `Predictor` on the exported model's in-memory Keras module, run eagerly
  (no SavedModel load, no tracing); near-online, T = 2. `with_options` gives
  other clip options. The fresh-process test shows the SavedModel computes the
  same maps, so its outputs are what the CLI must write."""
  from deeplab2_vkmax import predictor as predictor_lib
  return predictor_lib.Predictor.from_export_module(
      tiny_export[1], vkmax_testing.tiny_config(), use_tf_function=False)
