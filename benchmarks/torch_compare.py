"""jaxtrain's train step against the same model trained by PyTorch eager, on the CPU.

  pip install torch --index-url https://download.pytorch.org/whl/cpu    # or: pip install -e '.[bench]'
  python benchmarks/torch_compare.py            # 3 alternated rounds; one JSON object on stdout
  python benchmarks/run.py                      # folds the same figures into its JSON (--skip-torch: not)

The model is configs/digits_cnn.py's network (jaxtrain/models/classifiers.py `CNN` of `Block`s): per stage a
3x3 same-padded conv without bias (32, then 64 channels), BatchNorm, ReLU, dropout 0.1, 2x2 max pooling
(8x8 -> 4x4 -> 2x2); flatten (256); a dense block of 128 (no bias, BatchNorm, ReLU, dropout); a dense
classifier of 10. BatchNorm momentum 0.01 in PyTorch's convention is Flax's 0.99. Adam at the config's peak
rate (jaxtrain's cosine schedule costs one scalar per step), softmax cross-entropy, batch 32.

Both sides train on the same batches (one epoch of fit's, normalized, already in memory where each framework
computes: jaxtrain's as one chunk on the device, PyTorch's as tensors), so neither pays for input. PyTorch's
step is the minimal one a user writes (zero_grad, forward, loss, backward, step); jaxtrain's is fit's own,
which also computes the accuracy, the gradient norm and the learning rate it logs. Both frameworks get one
thread per core: XLA's CPU client sizes its pool that way, and `torch.set_num_threads(os.cpu_count())`;
PyTorch also runs with one thread (see `contenders`). `jaxtrain_step_vs_best_torch` divides by the fastest
PyTorch contender.
"""

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WARMUP_STEPS = 50  # As benchmarks/run.py's hand-timed loops.


class DigitsCNN(nn.Module):
  """configs/digits_cnn.py's CNN, layer for layer."""

  def __init__(self, dropout: float = 0.1, momentum: float = 0.01):
    super().__init__()
    self.dropout = dropout
    self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
    self.norm1 = nn.BatchNorm2d(32, momentum=momentum)
    self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
    self.norm2 = nn.BatchNorm2d(64, momentum=momentum)
    self.dense = nn.Linear(256, 128, bias=False)
    self.norm3 = nn.BatchNorm1d(128, momentum=momentum)
    self.head = nn.Linear(128, 10)

  def forward(self, x):
    for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
      x = F.max_pool2d(F.dropout(F.relu(norm(conv(x))), self.dropout, self.training), 2)
    x = F.dropout(F.relu(self.norm3(self.dense(x.flatten(1)))), self.dropout, self.training)
    return self.head(x)


def to_torch(batches: list[dict], channels_last: bool) -> list[tuple]:
  """NHWC numpy batches -> (NCHW image tensor, int64 labels), optionally stored channels-last."""
  out = []
  for batch in batches:
    image = torch.tensor(np.asarray(batch['image']).transpose(0, 3, 1, 2)).contiguous()
    if channels_last:
      image = image.contiguous(memory_format=torch.channels_last)
    out.append((image, torch.tensor(np.asarray(batch['label']), dtype=torch.long)))
  return out


def time_steps(batches: list[dict], num_steps: int, lr: float, threads: int, channels_last: bool = False,
               name: str = 'torch') -> dict:
  """Trains `num_steps` steps over the cycled `batches` after WARMUP_STEPS; steps/s and CPU ms per step."""
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = DigitsCNN()
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)
  items = to_torch(batches, channels_last)

  def step(i):
    image, label = items[i % len(items)]
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(image), label)
    loss.backward()
    optimizer.step()

  for i in range(WARMUP_STEPS):
    step(i)
  started, cpu_started = time.perf_counter(), time.process_time()
  for i in range(num_steps):
    step(i)
  cpu = time.process_time() - cpu_started
  return {f'{name}_steps_per_sec': num_steps / (time.perf_counter() - started),
          f'{name}_cpu_ms_per_step': 1e3 * cpu / num_steps}


def contenders(bench, threads: int) -> dict:
  """PyTorch's contenders on `bench`'s batches (a benchmarks/run.py `Bench`): `threads` threads with the
  default NCHW layout and with channels-last (which oneDNN's convolutions prefer), and one thread. The last
  because PyTorch's OpenMP threads wait for each other at every operator: on a CPU shared with other work a
  descheduled thread stalls them all, and two threads can be 10-30x slower than one."""
  host = [bench.train_data[i] for i in range(bench.steps_per_epoch)]  # The epoch jaxtrain_step trains on.
  lr = bench.config.optim.lr

  def run(num_threads: int, channels_last: bool, name: str):
    return lambda: time_steps(host, bench.num_steps, lr, num_threads, channels_last, name)

  return {'torch': run(threads, False, 'torch'),
          'torch_channels_last': run(threads, True, 'torch_channels_last'),
          'torch_1_thread': run(1, False, 'torch_1_thread')}


def ratios(figures: dict) -> dict:
  """jaxtrain's step ÷ each PyTorch contender's, and ÷ the fastest of them (the strictest comparison)."""
  jax_rate = figures['jaxtrain_step_steps_per_sec']
  names = ('torch', 'torch_channels_last', 'torch_1_thread')
  out = {f'jaxtrain_step_vs_{name}': jax_rate / figures[f'{name}_steps_per_sec'] for name in names}
  out['jaxtrain_step_vs_best_torch'] = jax_rate / max(figures[f'{name}_steps_per_sec'] for name in names)
  return {**out, 'torch_version': torch.__version__}


def _ms_per_call(call, num_calls: int, sync=lambda out: out) -> float:
  """Milliseconds per call of `call()` after WARMUP_STEPS calls; `sync` waits for the last result."""
  for _ in range(WARMUP_STEPS):
    out = call()
  sync(out)
  started = time.perf_counter()
  for _ in range(num_calls):
    out = call()
  sync(out)
  return 1e3 * (time.perf_counter() - started) / num_calls


def breakdown(bench, threads: int) -> dict:
  """Where a step's time goes, in ms per call on one pre-placed batch: the forward pass (training mode),
  forward and backward, the whole step; for jaxtrain also a jitted identity on the train state (the fixed
  cost of calling a compiled program), for PyTorch Adam's update alone and with `fused=True`."""
  import jax
  import optax

  torch.set_num_threads(threads)
  n = bench.num_steps
  batch = bench.device_batches[0]
  variables = bench.model.init(jax.random.PRNGKey(0), batch['image'], train=False)
  rngs = {'dropout': jax.random.PRNGKey(1)}

  def forward(params, image):
    return bench.model.apply({**variables, 'params': params}, image, train=True, rngs=rngs,
                             mutable=['batch_stats'])

  def loss(params, batch):
    logits, _ = forward(params, batch['image'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()

  jax_forward, jax_grad = jax.jit(forward), jax.jit(jax.grad(loss))
  identity = jax.jit(lambda state: state, donate_argnums=0)
  strategy, new_state, train_step = bench.jaxtrain_program()
  chunk = strategy.place_chunk({k: np.asarray(v)[None] for k, v in batch.items()})
  state = [new_state(), new_state()]

  def step():
    state[0], metrics = train_step(state[0], chunk, np.int32(0))
    return metrics

  def call_identity():
    state[1] = identity(state[1])
    return state[1]

  model = DigitsCNN()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  fused = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
  (image, label), = to_torch([jax.device_get(batch)], channels_last=False)

  def backward():
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(image), label).backward()

  def torch_step():
    backward()
    optimizer.step()

  backward()  # Gradients for the optimizer-alone figures.
  wait = jax.block_until_ready
  return {
      'jax_forward_ms': _ms_per_call(lambda: jax_forward(variables['params'], batch['image']), n, wait),
      'jax_forward_backward_ms': _ms_per_call(lambda: jax_grad(variables['params'], batch), n, wait),
      'jaxtrain_step_ms': _ms_per_call(step, n, wait),
      'jax_call_overhead_ms': _ms_per_call(call_identity, n, wait),
      'torch_forward_ms': _ms_per_call(lambda: model(image), n),
      'torch_forward_backward_ms': _ms_per_call(backward, n),
      'torch_step_ms': _ms_per_call(torch_step, n),
      'torch_adam_ms': _ms_per_call(optimizer.step, n),
      'torch_fused_adam_ms': _ms_per_call(fused.step, n),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=1500, help='timed steps per contender and round')
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='PyTorch intra-op threads')
  parser.add_argument('--breakdown', action='store_true',
                      help='also time the forward pass, backward pass and optimizer update of each framework')
  args = parser.parse_args()
  import run  # benchmarks/run.py, beside this script: the shared Bench (data, fit's step, the timing loop).

  # TFDS prints its data preparation on stdout; stdout is kept for the one JSON object.
  with tempfile.TemporaryDirectory(prefix='jaxtrain-torch-') as tmp, contextlib.redirect_stdout(sys.stderr):
    bench = run.Bench(pathlib.Path(tmp), args.steps, log_every=100)
    todo = {'jaxtrain_step': lambda: bench.jaxtrain_step(with_pipeline=False),
            **contenders(bench, args.threads)}
    if args.breakdown:
      todo['breakdown'] = lambda: breakdown(bench, args.threads)
    per_round: dict[str, list] = {}
    for r in range(args.rounds):
      for name, contender in todo.items():
        figures = contender()
        print(f'round {r + 1}/{args.rounds} {name}: {figures}', file=sys.stderr)
        for key, value in figures.items():
          per_round.setdefault(key, []).append(value)
  figures = {k: statistics.median(v) for k, v in per_round.items() if not k.endswith('first_step_s')}
  print(json.dumps({**figures, **ratios(figures), 'per_round': per_round}, indent=2))


if __name__ == '__main__':
  main()
