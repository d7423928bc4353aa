"""deeplab2_vkmax: Video-kMaX (clip-kMaX + HiLA-MB) in TensorFlow 2 / Keras 3."""

__version__ = '0.1.0'

# Attributes loaded on first use, so `import deeplab2_vkmax` does not import TensorFlow.
_LAZY_ATTRIBUTES = {
    'Predictor': 'deeplab2_vkmax.predictor',
    'FrameResult': 'deeplab2_vkmax.predictor',
}


def __getattr__(name):
  if name in _LAZY_ATTRIBUTES:
    import importlib  # pylint: disable=g-import-not-at-top
    value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_LAZY_ATTRIBUTES))
