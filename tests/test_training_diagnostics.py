"""Per-layer statistics during training (diag/... records, alerts once) and the learning-curve diagnosis."""

import logging

import jaxtrain
from jaxtrain.diagnostics import stats, training


def test_diagnostic_steps_log_per_layer_statistics_and_alert_once(make_config, caplog):
  config = make_config('digits_mlp', **{'train.num_steps': 40, 'diagnostics.every_steps': 10,
                                        'train.log_every_steps': 20, 'model.bias_init': 'constant(-10)'})
  with caplog.at_level(logging.WARNING, logger='jaxtrain'):
    run = jaxtrain.fit(config)
  diag = [r for r in run.history if any(key.startswith('diag/') for key in r)]
  assert [r['step'] for r in diag] == [10, 20, 30, 40]
  for statistic in ('grad_norm', 'param_norm', 'update_ratio'):
    assert f'diag/{statistic}/Block_0/Dense_0' in diag[0]
  for statistic in ('act_mean', 'act_std', 'dead'):
    assert f'diag/{statistic}/Block_0/Activation_0' in diag[0]
  assert diag[0]['diag/dead/Block_0/Activation_0'] > 0.5  # Biases of -10 kill the ReLUs ...
  alerts = [r.message for r in caplog.records if 'dead' in r.message and 'Block_0/Activation_0' in r.message]
  assert len(alerts) == 1  # ... and that is said once, not at every diagnostic step.


def test_diagnostics_off_writes_no_diag_records_and_runs_end_with_a_curve_diagnosis(make_config):
  run = jaxtrain.fit(make_config('digits_mlp', **{'train.num_steps': 40, 'train.eval_every_steps': 10}))
  assert not [key for record in run.history for key in record if key.startswith('diag/')]
  assert isinstance(run.summary['diagnosis'], list)
  assert all({'name', 'evidence', 'advice'} <= set(finding) for finding in run.summary['diagnosis'])


def test_vanishing_alert_during_training_uses_the_doctors_rule(make_config, caplog):
  """Note 004's 8 sigmoid layers: the doctor fails them, so training must say so too; gradients that fall
  by less than the doctor's 1/100 along the layers raise nothing."""
  deep = make_config('digits_mlp', **{'model.features': (64,) * 8, 'model.activation': 'sigmoid',
                                      'train.num_steps': 20, 'diagnostics.every_steps': 10})
  with caplog.at_level(logging.WARNING, logger='jaxtrain'):
    jaxtrain.fit(deep)
    alerts = [r.message for r in caplog.records if 'vanishing gradient' in r.message]
    assert len(alerts) == 1 and 'Block_0/Dense_0' in alerts[0]
    caplog.clear()
    order = ['Block_0/Dense_0', 'Block_1/Dense_0', 'head']
    diagnostics = training.TrainingDiagnostics(order)
    weights = {f'param_norm/{layer}': 1.0 for layer in order}
    for first in (0.05, 2e-3):  # 1/20 of the head's ratio: fine; 1/500: a warning.
      diagnostics.add(1, 0.0, stats.Statistics.pack({
          'grad_norm/Block_0/Dense_0': first, 'grad_norm/Block_1/Dense_0': 0.5, 'grad_norm/head': 1.0,
          **weights}))
      diagnostics.records()
  assert [r.message for r in caplog.records] == [
      "diagnostics at step 1: the gradient/weight ratio of Block_0/Dense_0 is 0.002 of a later layer's (the "
      "doctor's vanishing_gradients rule); vanishing gradient: use ReLU with He init, BatchNorm or residuals"]


def test_the_vanishing_rule_passes_over_a_layer_that_is_not_a_number():
  """A NaN or infinite statistic of one layer (a step about to be skipped) neither hides another layer's
  drop nor is reported as one: the rule judges the layers it can."""
  nan, inf = float('nan'), float('inf')
  order = ['a', 'b', 'c']
  ones = dict.fromkeys(order, 1.0)
  for grads, expected in (([1e-5, nan, 1.0], (1e-5, 'a')), ([nan, 1e-5, 1.0], (1e-5, 'b')),
                          ([1e-5, inf, 1.0], (0.0, 'a')), ([1.0, 0.5, 0.25], (1.0, ''))):
    assert stats.vanishing(dict(zip(order, grads, strict=True)), ones, order) == expected, grads
