"""TFLite export of the tiny clip-kMaX: size, speed and agreement per quantization.

  python bench/tflite.py [--repeats=10]

Builds the tiny model (seed 3, post-processing thresholds 0, so the untrained model
keeps segments), exports its clip function (`export_model.export_tflite`) as
float32, float16 and dynamic-range TFLite into a temporary folder, and times the
interpreter (2 threads, XNNPACK) against the same function as a `tf.function`,
alternating call by call on one synthetic clip [2, 64, 128, 3]. Prints a markdown
table: file size, median ms of each, the share of equal panoptic pixels and the
largest query-embedding difference.
"""

import argparse
import os
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax import export_model
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import clip_kmax

_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     'configs', 'synthetic', 'clip_kmax_tiny.textproto')


def _module():
  keras.utils.set_random_seed(3)
  config = config_lib.keep_every_segment(config_lib.load_experiment_config(_TINY))
  descriptor = dataset_lib.get_dataset_descriptor('synthetic')
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=6))
  model(tf.zeros([1, 2, 65, 129, 3]), training=False)
  return export_model.ClipKMaXExportModule(model, builder.build_post_processor(config,
                                                                               descriptor))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args()
  module = _module()
  params = synthetic.SyntheticParams(num_val_sequences=1, val_frames=2, height=64, width=128)
  clip = synthetic.generate_sequence(params, 'val', 0).images[:2]
  serve = tf.function(module.segment_clip)
  reference = {k: v.numpy() for k, v in serve(tf.constant(clip)).items()}
  print(f'load average: {os.getloadavg()}')
  print('| variant | file size | tflite | tf.function | panoptic pixels equal | '
        'max embedding diff |')
  print('| --- | --- | --- | --- | --- | --- |')
  with tempfile.TemporaryDirectory() as tmp:
    for quantization in export_model.TFLITE_QUANTIZATIONS:
      path = export_model.export_tflite(module, clip.shape[:3],
                                        os.path.join(tmp, f'{quantization}.tflite'),
                                        quantization)
      interpreter = tf.lite.Interpreter(model_path=path, num_threads=2)
      interpreter.allocate_tensors()

      def run_tflite(interpreter=interpreter):
        interpreter.set_tensor(interpreter.get_input_details()[0]['index'], clip)
        interpreter.invoke()
        return {name: interpreter.get_tensor(detail['index']) for name, detail in
                zip(export_model.TFLITE_OUTPUTS, interpreter.get_output_details())}

      outputs = run_tflite()
      times = {'tflite': [], 'function': []}
      for _ in range(args.repeats):
        start = time.perf_counter()
        run_tflite()
        times['tflite'].append(time.perf_counter() - start)
        start = time.perf_counter()
        serve(tf.constant(clip))['panoptic_pred'].numpy()
        times['function'].append(time.perf_counter() - start)
      agreement = np.mean(outputs['panoptic_pred'] == reference['panoptic_pred'])
      difference = np.abs(outputs['query_embeddings'] - reference['query_embeddings']).max()
      print(f'| {quantization} | {os.path.getsize(path) / 1e6:.2f} MB | '
            f'{statistics.median(times["tflite"]) * 1e3:.1f} ms | '
            f'{statistics.median(times["function"]) * 1e3:.1f} ms | '
            f'{agreement:.2%} | {difference:.1e} |', flush=True)


if __name__ == '__main__':
  main()
