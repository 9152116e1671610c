"""airbench94's recipe in plain PyTorch, trained on any image folder: what the reference reaches.

The CIFAR-10 speedrun (experiments/cifar10_speedrun.yaml) follows airbench94, which reports
94.01% on the original CIFAR-10. This script runs that recipe, written out independently in
PyTorch from its published description, on the data cnnlab trains on (here the JPEG copy), so
that cnnlab's result can be told apart from what the data allows:

    python benchmarks/airbench_reference.py ../shared/data/cifar10-jpeg.tar.gz

The recipe: a frozen 2x2 whitening conv (+/- eigenvectors of the patch covariance of 5,000
training images) whose bias trains for 3 epochs; three blocks of conv-pool-BN-GELU-conv-BN-GELU
at 64/256/256 with dirac-initialised convs and BN shifts at 64x the learning rate; global max
pool, a bias-free linear layer, logits x 1/9; summed label-smoothed (0.2) cross-entropy; Nesterov
SGD (lr 11.5 and decay 0.0153 per 1024 examples, momentum 0.85) on a triangular schedule
0.2 -> 1 -> 0.07 peaking at 23%; lookahead every 5 steps over the whole state; alternating flips
and 2-pixel reflect translation; 9.9 epochs of batch 1024; test-time flips and 1-pixel shifts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cnnlab.data.folder import load_folder  # noqa: E402

WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.6  # share of the old running statistics kept at each step
EPOCHS, BATCH = 9.9, 1024
LR, MOMENTUM, WEIGHT_DECAY, BIAS_SCALER = 11.5, 0.85, 0.0153, 64.0
LABEL_SMOOTHING, WHITEN_BIAS_EPOCHS, TRANSLATE = 0.2, 3, 2


class BatchNorm(nn.BatchNorm2d):
    """A learned shift, no scale; eps as small as airbench's."""

    def __init__(self, width):
        super().__init__(width, eps=1e-12, momentum=1 - BN_MOMENTUM)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    def __init__(self, width_in, width, kernel=3, padding="same", bias=False):
        super().__init__(width_in, width, kernel, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()  # PyTorch's default draw on the rest
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        nn.init.dirac_(w[: w.size(1)])  # identity on the first in-channels


class Block(nn.Module):
    def __init__(self, width_in, width):
        super().__init__()
        self.conv1, self.norm1 = Conv(width_in, width), BatchNorm(width)
        self.conv2, self.norm2 = Conv(width, width), BatchNorm(width)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Net(nn.Module):
    """airbench94's net (also bench_train.py's PyTorch contender for the `airbench` workload)."""

    def __init__(self, classes: int, channels: int = 3):
        super().__init__()
        self.whiten = Conv(channels, 24, kernel=2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        widths = (24, *WIDTHS)
        self.blocks = nn.Sequential(
            *(Block(a, b) for a, b in zip(widths, widths[1:], strict=False))
        )
        self.head = nn.Linear(WIDTHS[-1], classes, bias=False)

    def forward(self, x):
        x = self.blocks(F.gelu(self.whiten(x)))
        return self.head(F.adaptive_max_pool2d(x, 1).flatten(1)) / 9


def init_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2)
    flat = patches.reshape(len(patches), -1).double()
    values, vectors = torch.linalg.eigh(flat.T @ flat / len(flat))
    values, vectors = values.flip(0), vectors.T.reshape(12, 3, 2, 2).flip(0)
    scaled = (vectors / torch.sqrt(values + eps).view(-1, 1, 1, 1)).float()
    conv.weight.data[:] = torch.cat((scaled, -scaled))


def triangle(steps: int, start: float, end: float, peak: float) -> np.ndarray:
    return np.interp(np.arange(steps + 1), [0, int(peak * steps), steps], [start, 1.0, end])


class Lookahead:
    """Every call pulls the net back to a running average of itself over all floating state."""

    def __init__(self, net):
        self.slow = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay: float):
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                self.slow[key].lerp_(value, 1 - decay)
                value.copy_(self.slow[key])


def to_tensor(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def random_crops(padded: torch.Tensor, size: int, generator) -> torch.Tensor:
    n, pad2 = len(padded), padded.shape[-1] - size
    dx = torch.randint(0, pad2 + 1, (n,), generator=generator)
    dy = torch.randint(0, pad2 + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(size))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(size))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None],
                  rows, cols]  # fmt: skip


def predict(net, images: torch.Tensor) -> torch.Tensor:
    """Flips, and 1-pixel shifts up-left and down-right: airbench's test-time augmentation."""

    def mirrored(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    padded = F.pad(images, (1,) * 4, "reflect")
    shifted = 0.5 * mirrored(padded[..., :-2, :-2]) + 0.5 * mirrored(padded[..., 2:, 2:])
    return 0.5 * mirrored(images) + 0.5 * shifted


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="an image folder or tarball with train/ and test/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    began = time.perf_counter()

    data = load_folder(args.data)
    scaled = data.train.images.reshape(-1, 3) / 255.0
    mean = torch.tensor(scaled.mean(0), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(scaled.std(0), dtype=torch.float32).view(1, 3, 1, 1)
    train = to_tensor(data.train.images, mean, std)
    labels = torch.from_numpy(data.train.labels.astype(np.int64))
    test = to_tensor(data.test.images, mean, std)
    test_labels = torch.from_numpy(data.test.labels.astype(np.int64))

    net = Net(data.num_classes).to(memory_format=torch.channels_last)
    init_whitening(net.whiten, train[:5000])

    per_epoch = len(train) // BATCH
    total = math.ceil(per_epoch * EPOCHS)
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr, wd = LR / kilostep, WEIGHT_DECAY * BATCH / kilostep
    norm_biases = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    optimizer = torch.optim.SGD(
        [dict(params=norm_biases, lr=lr * BIAS_SCALER, weight_decay=wd / (lr * BIAS_SCALER)),
         dict(params=others, lr=lr, weight_decay=wd / lr)],
        momentum=MOMENTUM, nesterov=True,
    )  # fmt: skip
    schedule = triangle(total, start=0.2, end=0.07, peak=0.23)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: schedule[i])
    ramp = 0.95**5 * (np.arange(total + 1) / total) ** 3
    lookahead = Lookahead(net)

    # Each image's mirror state is drawn once, then all are inverted every other epoch.
    flips = torch.rand(len(train), generator=generator) < 0.5
    base = torch.where(flips[:, None, None, None], train.flip(-1), train)
    padded = F.pad(base, (TRANSLATE,) * 4, "reflect")
    step, loaded = 0, time.perf_counter()
    print(f"loaded in {loaded - began:.0f} s; {total} steps of {BATCH}", flush=True)
    for epoch in range(math.ceil(EPOCHS)):
        net.whiten.bias.requires_grad = epoch < WHITEN_BIAS_EPOCHS
        net.train()
        order = torch.randperm(len(train), generator=generator)
        for batch in range(per_epoch):
            index = order[batch * BATCH : (batch + 1) * BATCH]
            inputs = random_crops(padded[index], 32, generator)
            if epoch % 2 == 1:
                inputs = inputs.flip(-1)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(
                net(inputs), labels[index], label_smoothing=LABEL_SMOOTHING, reduction="sum"
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 5 == 0:
                lookahead.update(net, decay=float(ramp[step]))
            if step % 20 == 0:
                rate = step * BATCH / (time.perf_counter() - loaded)
                print(f"step {step}/{total} loss {loss.item() / BATCH:.3f} {rate:.0f} img/s",
                      flush=True)  # fmt: skip
            if step >= total:
                lookahead.update(net, decay=1.0)
                break
    trained = time.perf_counter()

    net.eval()
    with torch.no_grad():
        logits = torch.cat([predict(net, test[i : i + 500]) for i in range(0, len(test), 500)])
    accuracy = (logits.argmax(1) == test_labels).float().mean().item()
    done = time.perf_counter()
    print(f"test top-1 {accuracy:.2%} | train {(trained - loaded) / 60:.1f} min, "
          f"eval {(done - trained) / 60:.1f} min, all {(done - began) / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
