"""The episode's primary score, defined once: held-out test accuracy minus the seeds' parameter cost.

    score = test accuracy (%) after the last epoch - param_cost x param_epochs

`param_epochs` is the sum, over the trained epochs that follow each decision, of the seed's
parameters as a share of the host's: a seed counts from germination until it is culled, and for
ever once fossilized. With `param_cost` 0.1, a seed as large as the host held for 10 epochs costs 1
point (a conv seed fossilized at epoch 5 of 25 costs ~5.8). The per-step reward is the same
decomposition on the decision-validation split (accuracy delta - param_cost x share).

The test split is the one the score alone reads: `held_out_accuracy` refuses before the episode's
last epoch, and runs outside the tracker, so no feature, policy or label ever sees it. Generation
records `DEFINITION` in each pack's manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipelines.environment.morphogenetic_env import MorphogeneticEnv

DEFINITION = ("held-out test accuracy (%) after the last epoch - param_cost x param_epochs, param_epochs = "
              "sum over the epochs trained after each decision of seed parameters / host parameters")


class HeldOutSplitError(RuntimeError):
    """The test split was asked for before the final score, or the data set has none."""


@dataclass(frozen=True)
class PrimaryScore:
    score: float
    test_accuracy: float
    cost: float
    param_epochs: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def held_out_accuracy(env: MorphogeneticEnv, batch_size: int = 1024) -> float:
    """Accuracy (%) of the host on the dataset's test split; only once the episode is over."""
    ds = env.dataset
    if ds.x_test is None or ds.y_test is None:
        raise HeldOutSplitError(f"dataset {ds.name} has no held-out test split; the primary score needs one "
                                "(use digits_hard)")
    if not env.done:
        raise HeldOutSplitError("the test split is read only by the final score, after the episode's last epoch")
    model = env.model
    model.eval()
    correct = 0
    try:
        for start in range(0, len(ds.y_test), batch_size):
            x = ds.x_test[start:start + batch_size].to(env.device)
            y = ds.y_test[start:start + batch_size].to(env.device)
            correct += int((model(x).argmax(1) == y).sum())
    finally:
        model.train()
    return 100.0 * correct / len(ds.y_test)


def primary_score(env: MorphogeneticEnv) -> PrimaryScore:
    """The score of a finished episode (see the module docstring)."""
    test = held_out_accuracy(env)
    cost = env.options.param_cost * env.param_epochs
    return PrimaryScore(score=test - cost, test_accuracy=test, cost=cost, param_epochs=env.param_epochs)
