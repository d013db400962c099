"""Training hosts for the tracker benchmarks: the reference CNN, a CIFAR ResNet-18 and a small GPT.

Each host builds its model and synthetic batches and says how the standard profile's layer list
maps onto it (the profile names the reference host's `conv1`, `conv2`, `fc`). The ResNet-18 is the
usual CIFAR variant (3x3 stem, no max-pool, 11.2M parameters), written here because torchvision
cannot be installed beside this torch. The GPT is a pre-norm decoder (6 blocks, width 384, 6 heads,
sequence 256, a 64-symbol vocabulary; 10.8M parameters); it takes flat token ids and returns one row
of logits per token, so the tracker sees an ordinary classification batch, and its sharpness probe
batch is set to two whole sequences (512 tokens).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.environment.host import HostCNN


@dataclass(frozen=True)
class Host:
    name: str
    build: Callable[[], nn.Module]
    sample: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]  # batch size -> (x, y)
    num_classes: int
    batch: dict[str, int]  # device type -> batch size
    overrides: dict[str, list[str]] = field(default_factory=dict)  # profile -> config overrides

    def batches(self, n: int, device: torch.device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        size = self.batch[device.type]
        return [tuple(t.to(device) for t in self.sample(size, g)) for _ in range(n)]


def _images(channels: int, side: int, classes: int) -> Callable[[int, torch.Generator], tuple]:
    def sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, channels, side, side, generator=g), torch.randint(0, classes, (n,), generator=g)
    return sample


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, four stages of two basic blocks (64-512 channels)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class SmallGPT(nn.Module):
    """A pre-norm decoder over flat token ids (sequences of `seq` tokens); one logit row per token."""

    def __init__(self, vocab: int = 64, width: int = 384, depth: int = 6, heads: int = 6, seq: int = 256) -> None:
        super().__init__()
        self.seq = seq
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(seq, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.view(-1, self.seq)
        h = self.embed(x) + self.pos(torch.arange(self.seq, device=x.device))
        return self.head(self.ln(self.blocks(h))).reshape(-1, self.head.out_features)


def _tokens(vocab: int, seq: int) -> Callable[[int, torch.Generator], tuple]:
    def sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        # a learnable stream: each token is the previous plus a small random step, mod vocab
        steps = torch.randint(0, 3, (n, seq + 1), generator=g)
        stream = (torch.randint(0, vocab, (n, 1), generator=g) + steps.cumsum(1)) % vocab
        return stream[:, :-1].reshape(-1), stream[:, 1:].reshape(-1)
    return sample


HOSTS: dict[str, Host] = {
    "reference": Host("reference", HostCNN, _images(3, 32, 10), 10, {"cpu": 128, "cuda": 128}),
    "resnet18": Host("resnet18", ResNet18, _images(3, 32, 10), 10, {"cpu": 32, "cuda": 128},
                     {"standard": ["gradients.layers=[conv1,layer2,fc]"]}),
    "gpt": Host("gpt", SmallGPT, _tokens(64, 256), 64, {"cpu": 4, "cuda": 32},
                {"standard": ["gradients.layers=[embed,blocks.0,head]"],
                 **{p: ["loss_landscape.probe_batch_size=512"] for p in ("diagnostic", "research")}}),
}


def run_parser(description: str, hosts: tuple[str, ...], default_host: str) -> argparse.ArgumentParser:
    """The options every tracker benchmark takes: size of the run, device, host."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small run: a few minutes on 2 CPU cores")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--host", choices=hosts, default=default_host)
    parser.add_argument("--batches", type=int, help="training batches per epoch")
    parser.add_argument("--val-batches", type=int, help="validation batches per epoch")
    parser.add_argument("--reps", type=int, help="repetitions (epochs per variant)")
    return parser


def parse_run(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, torch.device]:
    """The arguments and the device, refusing CUDA where this torch has none."""
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    return args, torch.device(args.device)
