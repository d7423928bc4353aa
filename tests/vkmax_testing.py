"""Helpers shared by test files (imported as `vkmax_testing`; tests/ is on sys.path)."""

import os

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(_REPO, 'configs', 'synthetic', 'clip_kmax_tiny.textproto')


def tiny_config():
  """The config of the session's tiny export (conftest.py): the demo config with
  thresholds at 0, so the untrained model keeps segments (things included) and
  association has work to do, and the model of `clip_kmax.tiny_model_kwargs` (16
  slots, output stride 4, 8 channels at OS4) instead of the demo's (32 slots,
  output stride 2, 16 channels at OS4 and OS2)."""
  from deeplab2_vkmax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.model import clip_kmax  # pylint: disable=g-import-not-at-top
  config = config_lib.keep_every_segment(config_lib.load_experiment_config(TINY_CONFIG))
  kmax = config.model_options.clip_kmax
  tiny = clip_kmax.tiny_model_kwargs()
  kmax.num_mask_slots = tiny['num_mask_slots']
  kmax.pixel_decoder_widths[:] = tiny['pixel_decoder_widths']
  for name in ('decoder_output_stride', 'pixel_decoder_os2_width',
               'pixel_decoder_os2_block_count'):
    kmax.ClearField(name)  # The class defaults: output stride 4.
  return config


def synthetic_frames(num_frames: int, height: int = 64, width: int = 128) -> np.ndarray:
  """uint8 [num_frames, H, W, 3] frames of one synthetic val sequence."""
  from deeplab2_vkmax.data import synthetic  # pylint: disable=g-import-not-at-top
  params = synthetic.SyntheticParams(num_val_sequences=1, val_frames=max(num_frames, 2),
                                     height=height, width=width)
  return synthetic.generate_sequence(params, 'val', 0).images[:num_frames]
