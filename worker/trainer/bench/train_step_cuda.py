#!/usr/bin/env python3
"""PyTorch-eager reference on a GPU: shared/bench/train_step.py's loop (zero_grad, forward,
cross-entropy, backward, SGD momentum step; one random batch reused) on cuda, with the
loss read back every step (as the trainer does, to detect divergence). Prints one JSON line.
Uses torchvision's resnet when installed, else an identical local definition."""
import argparse, json, time

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--model", default="resnet50", choices=["resnet18", "resnet50"])
p.add_argument("--batch", type=int, default=64)
p.add_argument("--size", type=int, default=224)
p.add_argument("--classes", type=int, default=1000)
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--steps", type=int, default=30)
a = p.parse_args()


class Basic(nn.Module):
    expansion = 1

    def __init__(self, i, w, s):
        super().__init__()
        self.conv1 = nn.Conv2d(i, w, 3, s, 1, bias=False); self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, 1, 1, bias=False); self.bn2 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if s == 1 and i == w else nn.Sequential(nn.Conv2d(i, w, 1, s, bias=False), nn.BatchNorm2d(w))

    def forward(self, x):
        idn = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += idn
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, i, w, s):
        super().__init__()
        o = w * 4
        self.conv1 = nn.Conv2d(i, w, 1, bias=False); self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, s, 1, bias=False); self.bn2 = nn.BatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, o, 1, bias=False); self.bn3 = nn.BatchNorm2d(o)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if s == 1 and i == o else nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        idn = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += idn
        return self.relu(out)


def local_resnet(block, layers, classes):
    mods, i = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)], 64
    for stage, n in enumerate(layers):
        w = 64 << stage
        for j in range(n):
            mods.append(block(i, w, 2 if j == 0 and stage > 0 else 1)); i = w * block.expansion
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(i, classes))


try:
    import torchvision
    net = getattr(torchvision.models, a.model)(weights=None, num_classes=a.classes); impl = "torchvision " + torchvision.__version__
except ImportError:
    net = local_resnet(Basic, [2, 2, 2, 2], a.classes) if a.model == "resnet18" else local_resnet(Bottleneck, [3, 4, 6, 3], a.classes)
    impl = "local resnet (torchvision not installed)"
torch.manual_seed(0)
dev = torch.device("cuda")
net = net.to(dev).train()
x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
y = torch.randint(a.classes, (a.batch,), device=dev)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)


def one():
    opt.zero_grad()
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss.item()


for _ in range(a.warmup):
    one()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(a.steps):
    last = one()
torch.cuda.synchronize()
total = time.perf_counter() - t
print(json.dumps({"impl": "pytorch", "model": a.model, "batch": a.batch, "size": a.size, "device": torch.cuda.get_device_name(0),
                  "steps": a.steps, "seconds": round(total, 4), "img_s": round(a.batch * a.steps / total, 3), "last": last,
                  "torch": torch.__version__, "models_from": impl}))
