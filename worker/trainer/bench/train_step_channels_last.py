#!/usr/bin/env python3
"""PyTorch eager training steps with the model and input in channels-last memory format:
the layout tsweep's CPU backbones use. The same loop as shared/bench/train_step.py (one
random batch reused, SGD momentum 0.9, zero_grad + forward + backward + step); one JSON line.

  python3 train_step_channels_last.py --model resnet50 --batch 16 --size 224 --threads 2
"""
import argparse, json, time

import torch
import torch.nn.functional as F
import torchvision

p = argparse.ArgumentParser()
p.add_argument("--model", default="resnet50")
p.add_argument("--batch", type=int, default=16)
p.add_argument("--size", type=int, default=224)
p.add_argument("--classes", type=int, default=1000)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

torch.manual_seed(0)
torch.set_num_threads(a.threads)
net = getattr(torchvision.models, a.model)(weights=None, num_classes=a.classes).to(memory_format=torch.channels_last)
net.train()
x = torch.randn(a.batch, 3, a.size, a.size).contiguous(memory_format=torch.channels_last)
y = torch.randint(a.classes, (a.batch,))
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)


def one():
    opt.zero_grad()
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss


for _ in range(a.warmup):
    one()
step_s = []
t_all = time.perf_counter()
for _ in range(a.steps):
    t = time.perf_counter()
    out = one()
    step_s.append(time.perf_counter() - t)
total = time.perf_counter() - t_all
med = sorted(step_s)[len(step_s) // 2]
print(json.dumps({
    "impl": "pytorch-channels-last", "model": a.model, "mode": "train", "batch": a.batch, "size": a.size,
    "threads": torch.get_num_threads(), "steps": a.steps, "seconds": round(total, 4),
    "img_s": round(a.batch * a.steps / total, 3), "img_s_median_step": round(a.batch / med, 3),
    "last": round(float(out.item()), 4), "torch": torch.__version__,
}))
