"""Classification metrics of a policy's choices, for classes as unbalanced as WAIT makes them.

Plain accuracy rewards a policy that always waits (most steps are WAIT), so the headline number is
balanced accuracy: the mean recall over the actions that occur in the labels. Recall is undefined
(None) for an action the labels never contain, and such actions do not count toward the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationReport:
    rows: int
    accuracy: float | None
    balanced_accuracy: float | None
    recall: dict[str, float | None]  # action name -> recall, None where the labels lack the action
    confusion: list[list[int]]  # [true action][predicted action] counts, in action order

    def to_dict(self) -> dict[str, object]:
        return {"rows": self.rows, "accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
                "recall": self.recall, "confusion": self.confusion}


def balanced_accuracy(truth: Sequence[object], predicted: Sequence[object]) -> float | None:
    """Mean recall over the labels that occur in `truth` (any hashable labels, e.g. cause names)."""
    labels = sorted({*truth, *predicted}, key=str)
    index = {label: i for i, label in enumerate(labels)}
    return classification_report(np.array([index[t] for t in truth], dtype=np.int64),
                                 np.array([index[p] for p in predicted], dtype=np.int64),
                                 [str(label) for label in labels]).balanced_accuracy


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return counts


def classification_report(truth: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> ClassificationReport:
    """`truth` and `predicted` are action indices into `names` (unlabelled rows already removed)."""
    truth, predicted = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    counts = confusion_matrix(truth, predicted, len(names))
    support = counts.sum(axis=1)
    recall = {name: (float(counts[i, i] / support[i]) if support[i] else None) for i, name in enumerate(names)}
    present = [r for r in recall.values() if r is not None]
    return ClassificationReport(
        rows=int(len(truth)),
        accuracy=float(np.mean(truth == predicted)) if len(truth) else None,
        balanced_accuracy=float(np.mean(present)) if present else None,
        recall=recall,
        confusion=counts.tolist(),
    )
