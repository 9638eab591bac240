"""Which evaluation is the best so far, and when to stop early: plain bookkeeping over eval records.

Both are rebuilt from metrics.jsonl when a run resumes (`replay`), so a resumed run keeps its best step and
its patience count without storing them anywhere else.
"""

import dataclasses


@dataclasses.dataclass
class Best:
  """The best value of `metric` ('min' or 'max' is better) among the evaluations seen so far.

  An evaluation improves only when it beats the best by more than `min_delta`; `since` counts the
  evaluations since the last improvement (early stopping's patience).
  """

  metric: str
  mode: str
  min_delta: float = 0.0
  step: int | None = None
  record: dict = dataclasses.field(default_factory=dict)
  since: int = 0

  @property
  def value(self) -> float | None:
    return self.record.get(self.metric)

  def update(self, step: int, record: dict) -> bool:
    """Takes an eval record; True when it is the new best."""
    if self.metric not in record:
      return False
    value, best = record[self.metric], self.value
    if best is None or (value < best - self.min_delta if self.mode == 'min'
                        else value > best + self.min_delta):
      self.step, self.since = step, 0
      self.record = {k: v for k, v in record.items() if k.startswith('eval/')}
      return True
    self.since += 1
    return False

  def replay(self, history: list[dict], until_step: int) -> 'Best':
    """Feeds the eval records of `history` up to `until_step` (a resumed run's past)."""
    for record in history:
      if record['step'] <= until_step:
        self.update(record['step'], record)
    return self
