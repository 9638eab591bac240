"""Per-layer statistics during training (diag/... records, alerts once) and the learning-curve diagnosis."""

import logging

import jaxtrain


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
