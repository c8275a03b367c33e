#!/usr/bin/env python3
"""Writes control/resources/src/wire/go_types.rs: the Go struct order and the always-written
fields of every API type the API server serves, read from the Go type definitions.

Usage: go_types.py SRC OUT, where SRC holds `types.go` (and `watch.go`) of k8s.io/api
v0.33.0 (core/v1, apps/v1, batch/v1, coordination/v1, discovery/v1, scheduling/v1,
autoscaling/v1) and of k8s.io/apimachinery v0.33.0 (pkg/apis/meta/v1 as meta/v1,
pkg/version as version/x), one directory per package.
"""
import glob
import os
import re
import sys

IMPORTS = {
    "k8s.io/api/core/v1": "core/v1",
    "k8s.io/apimachinery/pkg/apis/meta/v1": "meta/v1",
}
# Types with their own JSON encoding: (nested, zero value when always written).
SPECIAL = {
    "meta/v1.Time": ("Leaf", "Null"),
    "meta/v1.MicroTime": ("Leaf", "Null"),
    "meta/v1.Duration": ("Leaf", 'Text("0s")'),
    "meta/v1.FieldsV1": ("Leaf", "Null"),
    "resource.Quantity": ("Leaf", 'Text("0")'),
    "intstr.IntOrString": ("Leaf", "Number"),
    "runtime.RawExtension": ("Embedded", "Null"),
}
SCALARS = {
    "string": 'Text("")', "bool": "False", "byte": "Number",
    **{t: "Number" for t in ["int", "int8", "int16", "int32", "int64", "uint", "uint8",
                             "uint16", "uint32", "uint64", "float32", "float64"]},
}
STRING_ALIASES = {"types.UID": "string", "meta/v1.Verbs": "[]string"}
ROOTS = [
    ("v1", "core/v1", k) for k in ["Namespace", "Pod", "Service", "Endpoints", "Node",
    "ConfigMap", "Secret", "Event", "ServiceAccount", "ResourceQuota",
    "ReplicationController"]
] + [
    ("apps/v1", "apps/v1", k) for k in ["Deployment", "ReplicaSet", "StatefulSet",
                                        "DaemonSet", "ControllerRevision"]
] + [
    ("batch/v1", "batch/v1", k) for k in ["Job", "CronJob"]
] + [
    ("coordination.k8s.io/v1", "coordination/v1", "Lease"),
    ("discovery.k8s.io/v1", "discovery/v1", "EndpointSlice"),
    ("scheduling.k8s.io/v1", "scheduling/v1", "PriorityClass"),
]
ROOTS = ROOTS + [(a, p, k + "List") for a, p, k in ROOTS] + [
    ("v1", "core/v1", "Binding"),
    ("autoscaling/v1", "autoscaling/v1", "Scale"),
    ("meta.k8s.io/v1", "meta/v1", "Table"),
    ("meta.k8s.io/v1", "meta/v1", "PartialObjectMetadata"),
    ("meta.k8s.io/v1", "meta/v1", "PartialObjectMetadataList"),
    ("v1", "meta/v1", "Status"),
    ("v1", "meta/v1", "APIResourceList"),
    ("v1", "meta/v1", "APIGroupList"),
    ("v1", "meta/v1", "APIGroup"),
    ("v1", "meta/v1", "APIVersions"),
]
OTHER_ROOTS = [
    ("WATCH_EVENT", "meta/v1", "WatchEvent"),
    ("VERSION_INFO", "version/x", "Info"),
    ("API_VERSIONS", "meta/v1", "APIVersions"),
]


def parse(src):
    structs, aliases, imports = {}, {}, {}
    for path in sorted(glob.glob(os.path.join(src, "*/*/*.go"))):
        pkg = "/".join(path.split("/")[-3:-1])
        text = open(path).read()
        imp = imports.setdefault(pkg, {})
        for m in re.finditer(r'^\s*(\w+\s+)?"([^"]+)"\s*$', text, re.M):
            path_ = m.group(2)
            alias = (m.group(1) or "").strip() or path_.split("/")[-1]
            imp[alias] = IMPORTS.get(path_, path_.split("/")[-1])
        for m in re.finditer(r"^type (\w+) ([^\s{]+)\s*$", text, re.M):
            aliases[f"{pkg}.{m.group(1)}"] = (pkg, m.group(2))
        for m in re.finditer(r"^type (\w+) struct \{\n(.*?)^\}", text, re.M | re.S):
            fields = []
            for line in m.group(2).split("\n"):
                line = line.strip()
                em = re.match(r'^([\w\.\*]+)\s+`json:"([^"]*)"', line)
                fm = re.match(r'^(\w+)\s+([^\s`]+)\s+`json:"([^"]*)"', line)
                if em:
                    fields.append((None, em.group(1), em.group(2)))
                elif fm:
                    fields.append(fm.groups())
            structs[f"{pkg}.{m.group(1)}"] = (pkg, fields)
    return structs, aliases, imports


def main(src, out):
    structs, aliases, imports = parse(src)

    def qualify(pkg, name):
        if "." in name:
            alias, rest = name.split(".", 1)
            return f"{imports[pkg].get(alias, alias)}.{rest}"
        return f"{pkg}.{name}"

    def resolve(pkg, ty):
        """(kind, detail): ptr/slice/map with an inner resolution, struct, special, scalar."""
        if ty.startswith("*"):
            return ("ptr", resolve(pkg, ty[1:]))
        if ty == "[]byte":
            return ("scalar", "Null")
        if ty.startswith("[]"):
            return ("slice", resolve(pkg, ty[2:]))
        if ty.startswith("map["):
            depth, i = 0, 3
            while True:
                depth += {"[": 1, "]": -1}.get(ty[i], 0)
                if depth == 0:
                    break
                i += 1
            return ("map", resolve(pkg, ty[i + 1:]))
        if ty in SCALARS:
            return ("scalar", SCALARS[ty])
        if ty == "interface{}":
            return ("scalar", "Null")
        q = qualify(pkg, ty)
        if q in SPECIAL:
            return ("special", SPECIAL[q])
        if q in STRING_ALIASES:
            return resolve(pkg, STRING_ALIASES[q])
        if q in structs:
            return ("struct", q)
        if q in aliases:
            apkg, target = aliases[q]
            return resolve(apkg, target)
        raise SystemExit(f"unknown type {ty} ({q}) in {pkg}")

    order, index = [], {}

    def visit(q):
        if q in index:
            return
        index[q] = len(order)
        order.append(q)
        for _, ty, _ in flat(q):
            r = resolve(structs[q][0], ty)
            while r[0] in ("ptr", "slice", "map"):
                r = r[1]
            if r[0] == "struct":
                visit(r[1])

    def flat(q):
        pkg, fields = structs[q]
        out = []
        for fname, ty, tag in fields:
            jname, *opts = tag.split(",")
            if fname is None and jname == "":
                out += flat(qualify(pkg, ty.lstrip("*")))
                continue
            if jname == "-":
                continue
            out.append((jname or fname, ty, "omitempty" in opts))
        return out

    for _, pkg, kind in ROOTS:
        visit(f"{pkg}.{kind}")
    for _, pkg, name in OTHER_ROOTS:
        visit(f"{pkg}.{name}")

    def field(q, jname, ty, omitempty):
        r = resolve(structs[q][0], ty)
        kind = r[0]
        inner = r
        while inner[0] in ("ptr", "slice", "map"):
            inner = inner[1]
        if kind == "struct":
            return f"Struct({index[r[1]]})", f"Always(Fill({index[r[1]]}))"
        if kind == "special":
            return r[1][0], f"Always({r[1][1]})"
        if kind == "scalar":
            return "Leaf", "UnlessEmpty" if omitempty else f"Always({r[1]})"
        nested = "Leaf"
        if inner[0] == "struct":
            if kind == "map":
                raise SystemExit(f"{q}.{jname}: a map of structs needs a Nested variant")
            wrap = {"ptr": "Struct", "slice": "Items"}[kind]
            if kind == "ptr" or r[1][0] == "struct":
                nested = f"{wrap}({index[inner[1]]})"
        elif inner[0] == "special" and inner[1][0] == "Embedded" and kind == "ptr":
            nested = "Embedded"
        if omitempty:
            return nested, "UnlessNil" if kind == "ptr" else "UnlessEmpty"
        return nested, "Always(Null)"

    lines = [
        "// @generated by control/resources/gen/go_types.py from the Go type definitions of",
        "// k8s.io/api and k8s.io/apimachinery v0.33.0. Do not edit by hand.",
        "",
        "use super::{",
        "    Emit::{Always, UnlessEmpty, UnlessNil},",
        "    Field, GoStruct,",
        "    Nested::{Embedded, Items, Leaf, Struct},",
        "    Zero::{False, Fill, Null, Number, Text},",
        "};",
        "",
        f"pub(super) static STRUCTS: [GoStruct; {len(order)}] = [",
    ]
    for i, q in enumerate(order):
        lines.append(f"    // {i}")
        lines.append(f'    GoStruct {{ name: "{q}", fields: &[')
        for jname, ty, omitempty in flat(q):
            nested, emit = field(q, jname, ty, omitempty)
            lines.append(f'        Field {{ name: "{jname}", nested: {nested}, emit: {emit} }},')
        lines.append("    ] },")
    lines.append("];")
    lines.append("")
    lines.append("/// The struct of a top-level object by its `apiVersion` and `kind`.")
    lines.append("pub(super) fn by_kind(api_version: &str, kind: &str) -> Option<usize> {")
    lines.append("    Some(match (api_version, kind) {")
    for api_version, pkg, kind in ROOTS:
        lines.append(f'        ("{api_version}", "{kind}") => {index[f"{pkg}.{kind}"]},')
    lines.append("        _ => return None,")
    lines.append("    })")
    lines.append("}")
    for const, pkg, name in OTHER_ROOTS:
        lines.append("")
        lines.append(f"/// `{pkg}.{name}`.")
        lines.append(f"pub(super) const {const}: usize = {index[f'{pkg}.{name}']};")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(order)} structs", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
