"""The diagnostics' figures, saved as PNG: the LR range test, per-layer gradient flow, a batch as the model
sees it, the worst examples, the confusion matrix and the prediction dynamics."""

import pathlib

import numpy as np


def _axes(figsize: tuple[float, float]):
  """(figure, axes) outside pyplot: saved to a file, it needs no backend, and pyplot's (a notebook's inline
  one) is left alone."""
  import matplotlib.figure  # noqa: PLC0415 - ~0.5 s to import; the CLI's start-up needs no figure.
  fig = matplotlib.figure.Figure(figsize=figsize)
  return fig, fig.subplots()


def _save(fig, path: pathlib.Path, margins: dict | None = None) -> None:
  """`margins` (subplots_adjust's) for the figures every run draws: `tight_layout` finds them by drawing the
  figure once more, 0.09 s of the confusion matrix's 0.26 s on a 2-core CPU and 0.05 of a grid's 0.14 s."""
  if margins:
    fig.subplots_adjust(**margins)
  else:
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


def is_image(values: np.ndarray) -> bool:
  """A batch of images: (batch, height, width) or (batch, height, width, 1 or 3 channels)."""
  return values.ndim == 3 or (values.ndim == 4 and values.shape[-1] in (1, 3))


def _cell(h: int, w: int) -> tuple[int, int]:
  """The montage's cell for an image of h x w: a margin at the side, room for a caption below."""
  return h + max(2, h // 2), w + max(2, w // 8)


def _montage(images: np.ndarray, columns: int) -> np.ndarray:
  """Images (n, h, w[, c]) scaled together into [0, 1] and tiled into one array, rows of `columns`."""
  images = images if images.ndim == 4 else images[..., None]
  low, high = float(images.min()), float(images.max())
  images = (images - low) / max(high - low, 1e-12)
  n, h, w, c = images.shape
  (cell_h, cell_w), rows = _cell(h, w), -(-n // columns)
  canvas = np.ones((rows * cell_h, columns * cell_w, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    canvas[r * cell_h:r * cell_h + h, col * cell_w:col * cell_w + w] = image
  return canvas[..., 0] if c == 1 else canvas


def image_grid(images: np.ndarray, captions: list[str], title: str, path: pathlib.Path,
               columns: int = 8) -> None:
  """Images in a grid with a caption under each: one imshow of a montage, fast for a whole batch."""
  canvas, (h, w) = _montage(images, columns), images.shape[1:3]
  (cell_h, cell_w), rows = _cell(h, w), -(-len(images) // columns)
  fig, ax = _axes((1.3 * columns, 1.5 * rows + 0.6))
  ax.imshow(canvas, cmap='gray' if canvas.ndim == 2 else None, interpolation='nearest')
  for i, caption in enumerate(captions):
    r, col = divmod(i, columns)
    ax.text(col * cell_w + w / 2, r * cell_h + h + 0.1 * h, caption, ha='center', va='top', fontsize=7)
  ax.set_title(title, fontsize=9)
  ax.axis('off')
  _save(fig, path, {'left': 0.01, 'right': 0.99, 'bottom': 0.01, 'top': 1 - 0.3 / fig.get_figheight()})


def text_table(lines: list[str], title: str, path: pathlib.Path) -> None:
  """Lines of a fixed-width table as a figure (for data that is not images)."""
  fig, ax = _axes((max(6.0, 0.075 * max(map(len, lines))), 0.25 * len(lines) + 0.8))
  ax.text(0, 1, '\n'.join(lines), family='monospace', fontsize=8, va='top', transform=ax.transAxes)
  ax.set_title(title, fontsize=9)
  ax.axis('off')
  _save(fig, path)


def confusion(counts: np.ndarray, path: pathlib.Path) -> None:
  """The confusion matrix, each row (true class) as fractions of its examples, with the counts written in."""
  rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  size = max(4.0, 0.45 * len(counts) + 2)
  fig, ax = _axes((size, size))
  shown = ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  if len(counts) <= 20:
    ax.set_xticks(range(len(counts)))
    ax.set_yticks(range(len(counts)))
    for (true, predicted), count in np.ndenumerate(counts):
      ax.text(predicted, true, str(count), ha='center', va='center', fontsize=7,
              color='white' if rates[true, predicted] > 0.5 else 'black')
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  fig.colorbar(shown, ax=ax, fraction=0.046, label='fraction of the true class')
  inches = {'left': 0.75, 'right': 0.8, 'bottom': 0.6, 'top': 0.15}  # Room for the labels and the colorbar.
  _save(fig, path, {side: room / size if side in ('left', 'bottom') else 1 - room / size
                    for side, room in inches.items()})


def dynamics(steps: list[int], values: np.ndarray, ylabel: str, path: pathlib.Path) -> None:
  """One line per fixed example: `values[evaluation, example]` against the step (note 002's prediction
  dynamics)."""
  fig, ax = _axes((6, 4))
  ax.plot(steps, values, alpha=0.6, linewidth=1)
  ax.set_xlabel('step')
  ax.set_ylabel(ylabel)
  ax.set_title(f'{values.shape[1]} fixed eval examples', fontsize=9)
  ax.grid(alpha=0.3)
  _save(fig, path)
