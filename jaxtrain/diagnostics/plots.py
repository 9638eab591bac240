"""The diagnostics' figures: the LR range test and per-layer gradient flow, saved as PNG."""

import pathlib

import matplotlib.figure


def _axes(figsize: tuple[float, float]):
  """(figure, axes) outside pyplot: saved to a file, it needs no backend, and pyplot's (a notebook's inline
  one) is left alone."""
  fig = matplotlib.figure.Figure(figsize=figsize)
  return fig, fig.subplots()


def _save(fig, path: pathlib.Path) -> None:
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)


def lr_find(result: dict, path: pathlib.Path, parallel: bool, configured_lr: float) -> None:
  """Loss against learning rate (log scale), with the suggested and the configured rate marked."""
  fig, ax = _axes((6, 4))
  kept = [i for i, loss in enumerate(result['losses']) if loss is not None]  # None: that run diverged.
  lrs, losses = [result['lrs'][i] for i in kept], [result['losses'][i] for i in kept]
  if parallel:
    ax.plot(lrs, losses, marker='o', label='final loss of a run at this rate')
  else:
    ax.plot(result['lrs'], result['raw_losses'], alpha=0.3, label='loss')
    ax.plot(lrs, losses, label='smoothed loss')
  ax.axvline(result['suggested_lr'], color='tab:green', linestyle='--',
             label=f'suggested {result["suggested_lr"]:.2g}')
  ax.axvline(configured_lr, color='tab:red', linestyle=':', label=f'configured {configured_lr:.2g}')
  ax.set_xscale('log')
  ax.set_xlabel('learning rate')
  ax.set_ylabel('training loss')
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path)


def gradient_flow(layers: list[str], norms: dict[str, list[float]], path: pathlib.Path) -> None:
  """Gradient norm per layer (input first, log scale), one line per moment, e.g. at init and later."""
  fig, ax = _axes((max(6, 0.6 * len(layers)), 4))
  for label, values in norms.items():
    ax.plot(range(len(layers)), [max(v, 1e-30) for v in values], marker='o', label=label)
  ax.set_xticks(range(len(layers)), layers, rotation=45, ha='right')
  ax.set_yscale('log')
  ax.set_xlabel('layer (input -> output)')
  ax.set_ylabel('gradient norm of the kernel')
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path)
