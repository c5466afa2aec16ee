#!/usr/bin/env python3
"""Convert torchvision / timm ImageNet weights for tsweep's trainer (run where they exist).

Writes
  --out FILE.safetensors   the model's state_dict under torchvision's names (float32,
                           num_batches_tracked dropped): `source = "builtin"` models load it
                           by name (resnet*, densenet*, mobilenet_v2, inception_v3, efficientnet_b0)
  --torchscript FILE.pt    (optional) a TorchScript module returning the pooled penultimate
                           features (classifier replaced by Identity): `source = "torchscript"`,
                           for the networks tsweep does not build in Rust (timm's inception_v4,
                           inception_resnet_v2, nasnet*, ...)

Examples
  tools/convert_weights.py --arch resnet50 --out weights/resnet50.safetensors
  tools/convert_weights.py --arch inception_v4 --source timm --torchscript weights/inception_v4.pt
  tools/convert_weights.py --arch resnet18 --random-init --out /tmp/r18.safetensors   # tests

Needs torch (+ torchvision or timm). No network access is attempted unless the weights are
not already in torch's hub cache (then torchvision/timm download them as usual).
"""
import argparse
import json
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


def write_safetensors(tensors, path):
    """The safetensors format by hand (8-byte header length, JSON header, raw bytes)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True)
    p.add_argument("--source", default="torchvision", choices=["torchvision", "timm", "tiny"])
    p.add_argument("--out", help="safetensors file (torchvision state_dict names)")
    p.add_argument("--torchscript", help="TorchScript module returning penultimate features")
    p.add_argument("--random-init", action="store_true", help="no pretrained weights (tests)")
    p.add_argument("--size", type=int, default=224, help="input size for the check / trace")
    p.add_argument("--reference", help="write a check file: a fixed input and the model's features for it (eval mode)")
    a = p.parse_args()
    if not a.out and not a.torchscript:
        p.error("give --out and/or --torchscript")
    model = build(a.arch, a.source, a.random_init).eval()
    if a.out:
        sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
        write_safetensors(sd, a.out)
        print(json.dumps({"out": a.out, "tensors": len(sd), "params": sum(v.numel() for v in sd.values())}))
    if a.reference:
        torch.manual_seed(0)
        x = torch.randn(2, 3, a.size, a.size)
        with torch.no_grad():
            features = strip_classifier(build(a.arch, a.source, True), a.source)
            features.load_state_dict(model.state_dict(), strict=False)
            out = features.eval()(x)
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


if __name__ == "__main__":
    main()
