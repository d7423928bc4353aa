"""A tiny clip-kMaX SavedModel exported once per test session for tests/tools."""

import os

import numpy as np
import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(_REPO, 'configs', 'synthetic', 'clip_kmax_tiny.textproto')


def tiny_config():
  """The demo config with thresholds at 0, so the untrained model keeps segments
  (things included) and association has work to do."""
  from deeplab2_vkmax import config as config_lib
  return config_lib.keep_every_segment(config_lib.load_experiment_config(TINY_CONFIG))


@pytest.fixture(scope='session')
def tiny_export(tmp_path_factory):
  """(SavedModel dir, in-process export module) of a tiny untrained clip-kMaX."""
  import keras
  import tensorflow as tf
  from deeplab2_vkmax import export_model
  from deeplab2_vkmax.data import dataset as dataset_lib
  from deeplab2_vkmax.model import builder
  from deeplab2_vkmax.model import clip_kmax

  # Keras 3 initialisers follow keras.utils.set_random_seed (not tf.random's seed);
  # seed 3 gives the untrained model several stuff and thing segments per frame.
  keras.utils.set_random_seed(3)
  config = tiny_config()
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
      tiny_export[1], tiny_config(), use_tf_function=False)


def synthetic_frames(num_frames: int, height: int = 64, width: int = 128) -> np.ndarray:
  """uint8 [num_frames, H, W, 3] frames of one synthetic val sequence."""
  from deeplab2_vkmax.data import synthetic
  params = synthetic.SyntheticParams(num_val_sequences=1, val_frames=max(num_frames, 2),
                                     height=height, width=width)
  return synthetic.generate_sequence(params, 'val', 0).images[:num_frames]
