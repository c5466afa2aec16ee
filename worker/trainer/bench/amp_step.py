#!/usr/bin/env python3
"""PyTorch reference for tsweep's mixed-precision benchmarks (trainer-bench --precision):
torchvision model, one random batch reused, the way a PyTorch user runs each precision.

  train:    zero_grad; with torch.autocast(device, dtype): loss = cross_entropy(net(x), y);
            backward; SGD(momentum 0.9, nesterov) step; loss.item() every step. fp16 adds
            torch.amp.GradScaler (scale, step, update), its defaults.
  features: net with its classifier replaced by Identity, eval mode, one
            `torch.no_grad()` + `torch.autocast` block around the whole loop (weights cast
            once, as tsweep's linear regime does), the features' sum read every batch.

fp32 runs the same code with autocast disabled (with `--layout contiguous --device cuda` it
is the PyTorch-eager reference of scripts/gpu-bench.sh's fp32 row; with `--no-nesterov`
shared/bench/train_step.py's plain-momentum loop in channels-last, cpu-train-bench.sh's
reference). `--layout channels-last` puts model and input in torch.channels_last (tsweep's
CPU layout). Without torchvision (a bare GPU machine) resnet18/50 come from an identical local
definition. Prints one JSON line.

  python3 amp_step.py --model resnet50 --mode train --precision bf16 --device cpu --batch 8 --size 160 --threads 2
"""
import argparse, json, time

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import torchvision
except ImportError:
    torchvision = None

p = argparse.ArgumentParser()
p.add_argument("--model", default="resnet50")
p.add_argument("--mode", default="train", choices=["train", "features"])
p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
p.add_argument("--layout", default="channels-last", choices=["channels-last", "contiguous"])
p.add_argument("--batch", type=int, default=16)
p.add_argument("--size", type=int, default=224)
p.add_argument("--classes", type=int, default=1000)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--no-nesterov", action="store_true", help="plain momentum (shared/bench/train_step.py's SGD)")
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


class LocalResNet(nn.Module):
    def __init__(self, block, layers, classes):
        super().__init__()
        mods, i = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)], 64
        for stage, n in enumerate(layers):
            w = 64 << stage
            for j in range(n):
                mods.append(block(i, w, 2 if j == 0 and stage > 0 else 1)); i = w * block.expansion
        self.body = nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(i, classes)

    def forward(self, x):
        return self.fc(self.body(x))


def build(name, classes):
    if torchvision is not None:
        return getattr(torchvision.models, name)(weights=None, num_classes=classes), "torchvision " + torchvision.__version__
    layers = {"resnet18": (Basic, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}
    if name not in layers:
        raise SystemExit(f"torchvision is not installed and there is no local {name} (resnet18, resnet50)")
    return LocalResNet(*layers[name], classes), "local resnet (torchvision not installed)"


torch.manual_seed(0)
torch.set_num_threads(a.threads)
dev = torch.device(a.device)
dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.precision]
fmt = torch.channels_last if a.layout == "channels-last" else torch.contiguous_format
net, models_from = build(a.model, a.classes)
train = a.mode == "train"
if not train:
    for head in ("fc", "classifier"):
        if hasattr(net, head):
            setattr(net, head, torch.nn.Identity())
net = net.to(dev).to(memory_format=fmt)
x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)
y = torch.randint(a.classes, (a.batch,), device=dev)


def autocast():
    return torch.autocast(a.device, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


if train:
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=not a.no_nesterov)
    scaler = torch.amp.GradScaler(a.device, enabled=a.precision == "fp16")

    def one():
        opt.zero_grad()
        with autocast():
            loss = F.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()
else:
    net.eval()

    def one():
        return net(x).float().sum().item()


def sync():
    if a.device == "cuda":
        torch.cuda.synchronize()


def timed():
    for _ in range(a.warmup):
        one()
    sync()
    step_s = []
    t_all = time.perf_counter()
    for _ in range(a.steps):
        t = time.perf_counter()
        last = one()
        step_s.append(time.perf_counter() - t)
    sync()
    return step_s, time.perf_counter() - t_all, last


if train:
    step_s, total, last = timed()
else:
    with torch.no_grad(), autocast():
        step_s, total, last = timed()
med = sorted(step_s)[len(step_s) // 2]
print(json.dumps({
    "impl": "pytorch", "model": a.model, "mode": a.mode, "precision": a.precision, "layout": a.layout,
    "batch": a.batch, "size": a.size, "threads": torch.get_num_threads(),
    "device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu", "steps": a.steps,
    "seconds": round(total, 4), "img_s": round(a.batch * a.steps / total, 3), "img_s_median_step": round(a.batch / med, 3),
    "last": last, "torch": torch.__version__, "models_from": models_from,
}))
