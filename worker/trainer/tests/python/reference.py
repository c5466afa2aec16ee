#!/usr/bin/env python3
"""PyTorch's side of worker/trainer/tests/real_weights.rs, in one process.

    reference.py OUT --case ARCH:SIZE:MEAN:STD [--case ...] --photos chelsea,coffee

For every case (MEAN and STD: three comma-separated values each, the model's input
normalisation of pixels in [0, 1], as tsweep's registry says) it writes
  OUT/ARCH.safetensors              the package checkpoint converted by tools/convert_weights.py
                                    (once per arch)
  OUT/ARCH.features.safetensors     `input` (2x3xSIZExSIZE, seed 0) and the reference model's
                                    pooled `features` for it (once per arch, first size)
  OUT/ARCH-SIZE.photos.safetensors  per photo P: `P.input` (torchvision's Resize(int(SIZE*256/224))
                                    + CenterCrop(SIZE) + ToTensor + Normalize), `P.features`
                                    and `P.logits` (the ImageNet classifier) of the reference model
and copies the photos (scikit-image's sample images) to OUT/photos/train/P/P.png.
The reference models: torchvision's mobilenet_v2 and tools/efficientnet_lite.py.

OUT is a cache: OUT/KEY holds the sha256 of these scripts, the arguments and every source
checkpoint, written last; when it matches, the files are already there and nothing runs.
"""
import hashlib
import argparse
import os
import shutil
import sys
from types import SimpleNamespace

import torch

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "tools")
sys.path.insert(0, os.path.abspath(TOOLS))
import convert_weights  # noqa: E402
import efficientnet_lite  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--case", action="append", required=True)
    p.add_argument("--photos", required=True)
    a = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import torchvision.transforms as T
    from PIL import Image
    from safetensors.torch import save_file

    key = cache_key(a)
    key_file = os.path.join(a.out, "KEY")
    if os.path.exists(key_file) and open(key_file).read() == key:
        print(f"reference files in {a.out} are up to date")
        return
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    photos = a.photos.split(",")
    for photo in photos:
        d = os.path.join(a.out, "photos", "train", photo)
        os.makedirs(d, exist_ok=True)
        shutil.copy(efficientnet_lite.photo_path(photo), os.path.join(d, f"{photo}.png"))
    models = {}
    for case in a.case:
        arch, size, mean, std = case.split(":")
        size, mean, std = int(size), [float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]
        if arch not in models:
            model = convert_weights.run(SimpleNamespace(
                arch=arch, source="package", checkpoint=None, random_init=False, size=size, torchscript=None,
                out=os.path.join(a.out, f"{arch}.safetensors"),
                reference=os.path.join(a.out, f"{arch}.features.safetensors")))
            models[arch] = (model, convert_weights.features_fn(model, arch, "package"))
        model, features = models[arch]
        preprocess = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                                T.Normalize(mean, std)])
        tensors = {}
        for photo in photos:
            x = preprocess(Image.open(efficientnet_lite.photo_path(photo)).convert("RGB")).unsqueeze(0)
            with torch.no_grad():
                tensors[f"{photo}.input"] = x
                tensors[f"{photo}.features"] = features(x)
                tensors[f"{photo}.logits"] = model(x)
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  os.path.join(a.out, f"{arch}-{size}.photos.safetensors"))
        print(f"{arch} at {size}: " + ", ".join(
            f"{photo} top-5 {tensors[f'{photo}.logits'][0].topk(5).indices.tolist()}" for photo in photos))

    with open(key_file, "w") as f:
        f.write(key)


def cache_key(a):
    """sha256 of what the files depend on: the code, the arguments, the checkpoints."""
    h = hashlib.sha256()
    for module in (__file__, convert_weights.__file__, efficientnet_lite.__file__):
        with open(module, "rb") as f:
            h.update(f.read())
    h.update(repr((sorted(a.case), a.photos)).encode())
    for arch in sorted({case.split(":")[0] for case in a.case}):
        with open(convert_weights.package_checkpoint(arch), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


if __name__ == "__main__":
    main()
