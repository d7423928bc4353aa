"""Run in a fresh process by test_predict.py: reloads a SavedModel with
`tf.saved_model.load` and runs both signatures on the clips of an .npz file.

  python reload_saved_model.py <saved_model dir> <clips.npz> <outputs.npz>

For every array `name` [T, H, W, 3] in clips.npz, writes `name/panoptic` and
`name/semantic` from `serving_default` and `name/frame_panoptic` from
`serving_frame` on the clip's first frame.
"""

import sys

import numpy as np
import tensorflow as tf


def main(saved_model: str, clips_path: str, outputs_path: str) -> None:
  loaded = tf.saved_model.load(saved_model)
  clip_fn = loaded.signatures['serving_default']
  frame_fn = loaded.signatures['serving_frame']
  outputs = {}
  with np.load(clips_path) as clips:
    for name in clips.files:
      clip = tf.constant(clips[name])
      result = clip_fn(input_tensor=clip)
      outputs[f'{name}/panoptic'] = result['panoptic_pred'].numpy()
      outputs[f'{name}/semantic'] = result['semantic_pred'].numpy()
      outputs[f'{name}/frame_panoptic'] = frame_fn(input_tensor=clip[0])['panoptic_pred'].numpy()
  np.savez(outputs_path, **outputs)


if __name__ == '__main__':
  main(*sys.argv[1:])
