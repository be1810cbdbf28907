#!/usr/bin/env python3
"""Checks management API answers against mgmt/openapi.yaml (required fields, types, enums, no
field the spec does not list). Usage: openapi_check.py SPEC PATH CODE BODY.json [PATH CODE BODY.json ...]
(PATH as in the spec, e.g. /api/v1/volumes/{name}; METHOD:PATH for another method than get, e.g.
put:/api/v1/volumes/{name}/policy). Exit 0 when every body matches."""
import json, sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
def resolve(s):
    while "$ref" in s:
        kind, name = s["$ref"].split("/")[-2:]
        s = spec["components"][kind][name]
    return s
def check(value, schema, where):
    schema = resolve(schema)
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float), "integer": int}
    assert t is None or (isinstance(value, types[t]) and not (t in ("integer", "number") and isinstance(value, bool))), \
        f"{where}: {value!r} is not {t}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if t == "object":
        for k in schema.get("required", []):
            assert k in value, f"{where}: missing {k}"
        for k, v in value.items():
            assert k in schema.get("properties", {}), f"{where}: {k} not in the spec"
            check(v, schema["properties"][k], f"{where}.{k}")
    if t == "array":
        for i, v in enumerate(value):
            check(v, schema["items"], f"{where}[{i}]")
args = sys.argv[2:]
for i in range(0, len(args), 3):
    path, code, body = args[i:i + 3]
    method, path = path.split(":", 1) if not path.startswith("/") else ("get", path)
    schema = resolve(spec["paths"][path][method]["responses"][code])["content"]["application/json"]["schema"]
    check(json.load(open(body)), schema, f"{path} {code}")
print("bodies match; paths in the spec:", ", ".join(spec["paths"]))
