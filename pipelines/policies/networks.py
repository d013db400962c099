"""The policy networks: an MLP over one feature row, or a GRU over an episode's rows so far.

Both output one number per action, logits or advantages over WAIT, depending on what they were
trained for (the saved policy records it). The MLP sees only the current decision's row, so what it
knows of the past is what the profile's history features hold; the GRU reads every row of the
episode up to the current one, so two feature sets compared with it see the same history length
whatever their profiles record. The GRU is causal by construction (one direction, no look-ahead):
its output at step t depends on rows 0..t only, so padding at an episode's end changes nothing
before it, and running it one decision at a time with its hidden state gives the same outputs as
running it over the whole sequence.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("mlp", "gru")


class PolicyNet(nn.Module):
    """`layers` hidden ReLU layers of width `hidden`, one output per action, for rows [..., inputs]."""

    def __init__(self, inputs: int, actions: int, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        sizes = [inputs] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(sizes[-1], actions))
        self.shape = {"inputs": inputs, "actions": actions, "hidden": hidden, "layers": layers}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs; invalid actions (mask False) get -inf so they are never chosen nor trained toward."""
        logits = self.body(x)
        return logits if mask is None else logits.masked_fill(~mask, float("-inf"))


class SequenceNet(nn.Module):
    """A `layers`-deep GRU of width `hidden` over [episodes, steps, inputs], one output per action
    at every step. `step` advances one decision at a time from a carried hidden state."""

    def __init__(self, inputs: int, actions: int, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(inputs, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, actions)
        self.shape = {"model": "gru", "inputs": inputs, "actions": actions, "hidden": hidden, "layers": layers}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`x` [episodes, steps, inputs] (or [steps, inputs]: one episode) -> outputs [..., actions]."""
        out, _ = self.gru(x)
        logits = self.head(out)
        return logits if mask is None else logits.masked_fill(~mask, float("-inf"))

    def step(self, x: torch.Tensor, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decision: `x` [1, inputs] and the state after the episode's earlier rows (None at its
        start) -> (outputs [1, actions], the state to carry to the next decision)."""
        out, hidden = self.gru(x.unsqueeze(0), hidden)
        return self.head(out[:, -1]), hidden


def build_network(model: str, inputs: int, actions: int, hidden: int, layers: int) -> PolicyNet | SequenceNet:
    if model not in MODELS:
        raise ValueError(f"model {model!r}; expected one of: {', '.join(MODELS)}")
    kind = SequenceNet if model == "gru" else PolicyNet
    return kind(inputs, actions, hidden, layers)


def network_parameters(inputs: int, actions: int, hidden: int, layers: int, model: str = "mlp") -> int:
    """Weights and biases of the network `build_network` makes, counted before it is built."""
    if model == "gru":  # per layer: three gates, each input and hidden weights with two biases
        gates = sum(3 * (n_in * hidden + hidden * hidden + 2 * hidden) for n_in in [inputs] + [hidden] * (layers - 1))
        return gates + hidden * actions + actions
    sizes = [inputs] + [hidden] * layers + [actions]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))
