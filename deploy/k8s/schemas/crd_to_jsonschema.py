#!/usr/bin/env python3
"""Turn a CustomResourceDefinition's OpenAPI v3 schema into a strict JSON Schema.

Used to derive deploy/k8s/schemas/keda-*.json from KEDA's own CRDs (vendored beside this
file, keda-vX.Y.Z/keda.sh_*.yaml, Apache-2.0, from kedacore/keda config/crd/bases/).

    crd_to_jsonschema.py CRD.yaml VERSION > OUT.json      # write one schema
    crd_to_jsonschema.py --check CRD.yaml VERSION OUT.json # exit 1 if OUT.json is stale

The conversion follows what the API server does with a structural schema:
  - `nullable: true` adds "null" to the type;
  - `x-kubernetes-int-or-string` fields carry their own anyOf (kept);
  - objects with `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` reject unknown fields (kubectl's default
    --validate=strict turns pruned fields into errors, so a typo fails here as it would there);
  - `description`, `format` and `x-kubernetes-*` annotations are dropped.
The document root also pins apiVersion and kind and requires metadata and spec.
"""
import json
import sys

import yaml

DROPPED_KEYS = {"description", "format", "example", "externalDocs"}


def convert(node):
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    preserve_unknown = node.get("x-kubernetes-preserve-unknown-fields") is True
    out = {}
    for key, value in node.items():
        if key in DROPPED_KEYS or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: convert(sub) for name, sub in value.items()}
        elif key in ("additionalProperties", "items", "not"):
            out[key] = convert(value) if isinstance(value, (dict, list)) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(sub) for sub in value]
        else:
            out[key] = value
    if node.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out and not preserve_unknown):
        out["additionalProperties"] = False
    return out


def schema_for(crd_path, version):
    with open(crd_path, encoding="utf-8") as crd_file:
        crd = next(doc for doc in yaml.safe_load_all(crd_file) if doc)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    served = [v for v in crd["spec"]["versions"] if v["name"] == version]
    if not served:
        raise SystemExit(f"{crd_path}: no version {version} in spec.versions")
    schema = convert(served[0]["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    # metadata is validated by the API server itself; keep it an object with a name
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}},
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"{kind} {group}/{version} (generated from {crd_path.rsplit('/', 2)[-2]}/{crd_path.rsplit('/', 1)[-1]})"
    return schema


def render(schema):
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def main(argv):
    if len(argv) == 4 and argv[0] == "--check":
        crd_path, version, out_path = argv[1:]
        with open(out_path, encoding="utf-8") as existing:
            if existing.read() != render(schema_for(crd_path, version)):
                print(f"{out_path}: stale, regenerate it from {crd_path}", file=sys.stderr)
                return 1
        return 0
    if len(argv) == 2:
        sys.stdout.write(render(schema_for(argv[0], argv[1])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
