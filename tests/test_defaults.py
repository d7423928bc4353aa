"""Each default is declared once.

A scalar setting's default lives in its `.proto`: the classes take it as their
signature default (`protos.fields`), and `deeplab2_vkmax.builder` passes the
config's values by name. So an empty config must build exactly what a
default-constructed object is, and no signature may carry a value of its own.
"""

import inspect

import pytest

from deeplab2_vkmax import builder
from deeplab2_vkmax.association import hila_memory_buffer
from deeplab2_vkmax.association import naive_memory_buffer
from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.association import video_stitcher
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model.loss import kmax_loss
from deeplab2_vkmax.model.post_processor import clip_post_processor
from deeplab2_vkmax.protos import association_pb2
from deeplab2_vkmax.protos import config_pb2
from deeplab2_vkmax.protos import fields

DESCRIPTOR = dataset_lib.get_dataset_descriptor('synthetic')


def _signature_defaults(cls):
  return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
          if p.default is not inspect.Parameter.empty}


def _built_kwargs(monkeypatch, module, class_name, build):
  """The keyword arguments `build` passes to `module.class_name`."""
  cls = getattr(module, class_name)
  calls = []

  def record(**kwargs):
    calls.append(kwargs)
  # The builder reads `cls.__init__`'s parameters: the stand-in keeps them.
  record.__init__ = record
  record.__signature__ = inspect.signature(cls.__init__)
  monkeypatch.setattr(module, class_name, record)
  build()
  (kwargs,) = calls
  return kwargs


@pytest.mark.parametrize('module, class_name, build, min_settings', [
    (video_associater, 'VideoAssociater', builder.build_associater, 9),
    (clip_post_processor, 'ClipPostProcessor', builder.build_post_processor, 9),
    (kmax_loss, 'KMaXLoss', builder.build_loss, 12),
    (clip_kmax, 'ClipKMaX', builder.model_kwargs, 25),
])
def test_an_empty_config_builds_the_default_constructed_object(monkeypatch, module, class_name,
                                                               build, min_settings):
  defaults = _signature_defaults(getattr(module, class_name))
  if class_name == 'ClipKMaX':  # model_kwargs returns the arguments itself.
    kwargs = builder.model_kwargs(config_pb2.ExperimentOptions(), DESCRIPTOR)
  else:
    kwargs = _built_kwargs(monkeypatch, module, class_name,
                           lambda: build(config_pb2.ExperimentOptions(), DESCRIPTOR))
  compared = sorted(set(kwargs) & set(defaults))
  assert len(compared) >= min_settings, compared
  for name in compared:
    assert kwargs[name] == defaults[name], (class_name, name, kwargs[name], defaults[name])
    assert type(kwargs[name]) is type(defaults[name]), name  # 0.8, not np.float32.


def test_the_empty_config_model_is_the_default_model():
  kwargs = builder.model_kwargs(config_pb2.ExperimentOptions(), DESCRIPTOR)
  assert (clip_kmax.ClipKMaX(**kwargs, name='model').get_config()
          == clip_kmax.ClipKMaX(num_classes=DESCRIPTOR.num_classes, name='model').get_config())


def test_association_parts_share_the_proto_defaults():
  proto = fields.defaults(association_pb2.AssociationOptions)
  assert proto['tau'] == 10 and proto['lam'] == 0.8 and proto['alpha'] == 0.7
  for cls in (video_associater.VideoAssociater, hila_memory_buffer.HiLAMemoryBuffer,
              naive_memory_buffer.NaiveMemoryBuffer):
    for name, value in _signature_defaults(cls).items():
      assert value == proto[name], (cls.__name__, name)
  stitcher = _signature_defaults(video_stitcher.VideoStitcher)
  assert (stitcher['score'], stitcher['threshold']) == (proto['stitching_score'],
                                                        proto['stitching_threshold'])


def test_config_values_reach_the_objects_by_name(monkeypatch):
  config = config_pb2.ExperimentOptions()
  config.evaluator_options.association.tau = 3
  config.evaluator_options.association.lam = 0.25
  config.evaluator_options.maskwise_postprocessing.overlapping_threshold = 0.6
  config.model_options.clip_kmax.instance_discrimination_temperature = 0.2
  associater = _built_kwargs(monkeypatch, video_associater, 'VideoAssociater',
                             lambda: builder.build_associater(config, DESCRIPTOR))
  assert (associater['tau'], associater['lam']) == (3, 0.25)
  post = _built_kwargs(monkeypatch, clip_post_processor, 'ClipPostProcessor',
                       lambda: builder.build_post_processor(config, DESCRIPTOR))
  assert post['overlapping_threshold'] == 0.6  # The config's text, not float32's 0.600000024.
  loss = _built_kwargs(monkeypatch, kmax_loss, 'KMaXLoss',
                       lambda: builder.build_loss(config, DESCRIPTOR))
  assert loss['instance_discrimination_temperature'] == 0.2
