"""Prints the measured DeepLab2-fidelity table of docs/model.md.

For each DeepLab2 reference pack (tests/fidelity/testdata): restore the pack's
checkpoint into our model, run its image at T = 1, and print per endpoint group the
largest max|ours - ref| / max|ref|, the mask-argmax agreement and the panoptic
agreement; then every loss term's relative difference on the loss pack.

Usage: python bench/fidelity_report.py
"""

import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'tests', 'fidelity'))
import dl2_packs  # pylint: disable=g-import-not-at-top,wrong-import-position

from deeplab2_vkmax import common  # pylint: disable=wrong-import-position
from deeplab2_vkmax import builder  # pylint: disable=wrong-import-position

_GROUPS = (
    ('encoder', lambda k: k.startswith('encoder/')),
    ('pixel decoder', lambda k: k.startswith('pixel_decoder/')),
    ('kMaX blocks 0-2 (centres, aux outputs)',
     lambda k: any(f'{p}{i}/' in k for p in ('block', 'aux') for i in (0, 1, 2))),
    ('kMaX blocks 3-5 (centres, aux outputs)',
     lambda k: any(f'{p}{i}/' in k for p in ('block', 'aux') for i in (3, 4, 5))),
    ('class / mask embeddings, mask kernel',
     lambda k: k.startswith('transformer_decoder/transformer_') or 'mask_kernel' in k),
    ('pixel head, normalised feature',
     lambda k: k in ('heads/pixel_space_feature', 'pixel_space_normalized_feature')),
    ('semantic decoder and logits',
     lambda k: k in ('heads/semantic_decoder_feature', 'semantic_logits')),
    ('final class logits', lambda k: k == 'transformer_class_logits'),
    ('final mask logits', lambda k: k == 'pixel_space_mask_logits'),
)


def _forward_rows(pack, workdir):
  config, descriptor, model = dl2_packs.restored_model(pack, workdir)
  ref = dl2_packs.reference(pack)
  if dl2_packs.pack_facts(pack)['ignore_label'] == 0:
    ref['semantic_logits'] = ref['semantic_logits'][..., 1:]
  ours = dl2_packs.our_arrays(model, ref['image'])
  rows = []
  for title, member in _GROUPS:
    keys = [k for k in ref if k in ours and member(k) and ref[k].dtype.kind == 'f']
    if keys:
      worst = max(keys, key=lambda k: dl2_packs.relative_error(ours[k], ref[k]))
      rows.append((title, len(keys), dl2_packs.relative_error(ours[worst], ref[worst]),
                   worst))
  argmax = min(dl2_packs.argmax_agreement(ours[k], ref[k]) for k in ref
               if k.endswith('pixel_space_mask_logits'))
  outputs = model(tf.constant(ref['image'][:, np.newaxis], tf.float32), training=False,
                  auxiliary_outputs=True)
  panoptic = dl2_packs.our_panoptic(config, descriptor, outputs, pack)
  return rows, argmax, float(np.mean(panoptic == ref['panoptic_pred']))


def _loss_rows():
  config = dl2_packs.load_config('cityscapes_r50')
  config.model_options.clip_kmax.instance_discrimination_sample_k = 33 * 65
  from deeplab2_vkmax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  loss = builder.build_loss(config, dataset_lib.get_dataset_descriptor(
      config.train_dataset_options.dataset))
  gt, values = dl2_packs.loss_pack()
  label = {common.PANOPTIC_LABEL: tf.constant(gt['gt/panoptic'][np.newaxis, np.newaxis])}
  rows = []
  for case, make in (('synthetic_predictions', dl2_packs.synthetic_predictions),
                     ('model_outputs', dl2_packs.model_output_predictions)):
    kwargs = {}
    if case == 'model_outputs':
      kwargs['assignment'] = dl2_packs.deeplab2_assignment(loss, gt, case)
    ours = dl2_packs.loss_terms(loss(label, make(), **kwargs))
    expected = values['cases'][case]['deterministic']['values']
    errors = {k: abs(ours[k] - v) / abs(v) for k, v in expected.items()}
    worst = max(errors, key=errors.get)
    rows.append((case, len(errors), errors[worst], worst,
                 errors['total_loss']))
  return rows


def main():
  print('| pack | endpoints | arrays | max rel. diff | worst array |')
  print('| --- | --- | --- | --- | --- |')
  summary = []
  for pack in dl2_packs.PACK_CONFIGS:
    with tempfile.TemporaryDirectory() as workdir:
      rows, argmax, panoptic = _forward_rows(pack, workdir)
    for title, count, error, worst in rows:
      print(f'| {pack} | {title} | {count} | {error:.1e} | `{worst}` |')
    summary.append((pack, argmax, panoptic))
  print()
  print('| pack | mask argmax agreement (final + 6 aux, min) | panoptic agreement |')
  print('| --- | --- | --- |')
  for pack, argmax, panoptic in summary:
    print(f'| {pack} | {argmax:.4f} | {panoptic:.4f} |')
  print()
  print('| loss pack case | terms | max rel. diff | worst term | total rel. diff |')
  print('| --- | --- | --- | --- | --- |')
  for case, count, error, worst, total in _loss_rows():
    print(f'| {case} | {count} | {error:.1e} | `{worst}` | {total:.1e} |')


if __name__ == '__main__':
  main()
