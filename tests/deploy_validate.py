"""Validates Kubernetes and KServe manifests offline, for tests/deploy_test.ts.

    python tests/deploy_validate.py [--kubernetes-version 1.34] FILE.yaml...

Prints one JSON object: {"kubernetes": ..., "kserve": ..., "documents": [{"file", "index",
"apiVersion", "kind", "name", "validator", "errors"}...]} and exits 0 when every document
validated, 1 when any did not, 2 on a usage error.

Core kinds (Deployment, Service, HorizontalPodAutoscaler, ...) are checked with
kubernetes-validate's strict JSON schemas for the pinned Kubernetes release (unknown fields
are errors). The KServe kinds (serving.kserve.io) have no schema there, so they are checked
against the KServe Python SDK's generated models (openapi_types / attribute_map, produced from
KServe's OpenAPI spec): unknown fields and wrong JSON types are errors, and the Kubernetes
types nested in them (containers, probes, resources, metadata) are checked against the same
strict Kubernetes JSON schemas. A kind with no schema is an error, never a pass.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import re
import sys
import types
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import referencing
import yaml

KSERVE_GROUP = "serving.kserve.io"


def load_kserve_models() -> types.ModuleType:
    """Imports kserve.models without kserve/__init__.py.

    The package's __init__ imports the model server (FastAPI, gRPC, NumPy, pandas ...), none
    of which the generated API models need; a bare package module lets the submodules load.
    """
    spec = importlib.util.find_spec("kserve")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("The kserve package is not installed; run tools/deploy_setup.ts")
    package = types.ModuleType("kserve")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("kserve", package)
    import kserve.models  # noqa: PLC0415  (after the stub, on purpose)

    return kserve.models


class KubernetesSchemas:
    """The strict JSON schema definitions of one Kubernetes release (from kubernetes-validate)."""

    def __init__(self, version: str) -> None:
        versions = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == version]
        if not versions:
            raise SystemExit(
                f'kubernetes-validate {kubernetes_validate.__version__} has no schemas for '
                f'Kubernetes "{version}"'
            )
        self.version = versions[-1]
        folder = f"kubernetes-json-schema/v{self.version}-local-strict"
        self.root = kv_utils.schema_contents(f"{folder}/_definitions.json", version)
        self.defs: dict[str, Any] = self.root["$defs"]
        self.registry = referencing.Resource.from_contents(self.root) @ referencing.Registry()
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def definition_for(self, client_type: str) -> str | None:
        """Maps an OpenAPI client type name (V1Container, ResourceQuantity, ...) to a $defs key."""
        if client_type == "ResourceQuantity":
            return "io.k8s.apimachinery.pkg.api.resource.Quantity"
        match = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d+(?:alpha\d+|beta\d+)?)(\w+)", client_type)
        if match:
            group, version, kind = match.groups()
            key = f"io.k8s.api.{group.lower()}.{version.lower()}.{kind}"
            return key if key in self.defs else None
        match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", client_type)
        if not match:
            return None
        version, kind = match.group(1).lower(), match.group(2)
        # Core and meta types carry no group in the client names; prefer them, like the client.
        for key in (
            f"io.k8s.api.core.{version}.{kind}",
            f"io.k8s.apimachinery.pkg.apis.meta.{version}.{kind}",
        ):
            if key in self.defs:
                return key
        candidates = [k for k in self.defs if k.endswith(f".{version}.{kind}")]
        return candidates[0] if len(candidates) == 1 else None

    def errors(self, value: Any, definition: str, path: str) -> list[str]:
        """Validates a value against one definition; returns messages prefixed with the path."""
        validator = self._validators.get(definition)
        if validator is None:
            schema = {"$ref": f"#/$defs/{definition}", "$defs": self.defs}
            validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
            self._validators[definition] = validator
        out = []
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.path)):
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
            out.append(f"{path}{where}: {error.message}")
        return out


PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "date": (str,),
    "datetime": (str,),
}


class KServeChecker:
    """Checks a KServe object against the SDK's generated models, recursively."""

    def __init__(self, models: types.ModuleType, kubernetes: KubernetesSchemas) -> None:
        self.models = models
        self.kubernetes = kubernetes

    def check(self, value: Any, type_name: str, path: str) -> list[str]:
        if value is None:
            return []  # optional fields may be null, as the API server accepts
        if type_name.startswith("list["):
            if not isinstance(value, list):
                return [f"{path}: expected a list, got {json.dumps(value)[:80]}"]
            inner = type_name[5:-1]
            return [e for i, item in enumerate(value) for e in self.check(item, inner, f"{path}[{i}]")]
        if type_name.startswith("dict("):
            if not isinstance(value, dict):
                return [f"{path}: expected a mapping, got {json.dumps(value)[:80]}"]
            inner = re.fullmatch(r"dict\(([^,]*), (.*)\)", type_name).group(2)
            return [e for k, v in value.items() for e in self.check(v, inner, f"{path}.{k}")]
        if type_name == "object":
            return []  # free-form in the SDK's schema
        if type_name in PRIMITIVES:
            ok = isinstance(value, PRIMITIVES[type_name]) and (
                type_name == "bool" or not isinstance(value, bool)
            )
            return [] if ok else [f"{path}: expected {type_name}, got {json.dumps(value)[:80]}"]
        model = getattr(self.models, type_name, None)
        if model is not None and hasattr(model, "openapi_types"):
            return self.check_model(value, model, path)
        definition = self.kubernetes.definition_for(type_name)
        if definition is None:
            return [f'{path}: no schema for type "{type_name}"']
        return self.kubernetes.errors(value, definition, path)

    def check_model(self, value: Any, model: type, path: str) -> list[str]:
        if not isinstance(value, dict):
            return [f"{path}: expected an object ({model.__name__}), got {json.dumps(value)[:80]}"]
        by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
        errors: list[str] = []
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            attr = by_json.get(key)
            if attr is None:
                errors.append(f'{path}: unknown field "{key}" in {model.__name__}')
                continue
            kwargs[attr] = item
            errors += self.check(item, model.openapi_types[attr], f"{path}.{key}")
        if not errors:
            # The generated setters enforce required fields and enums.
            try:
                model(**kwargs)
            except (ValueError, TypeError) as error:
                errors.append(f"{path}: {error}")
        return errors


def validate_document(
    doc: Any, kubernetes: KubernetesSchemas, kserve: KServeChecker
) -> tuple[str, list[str]]:
    if not isinstance(doc, dict):
        return "none", [f"document is not a mapping: {json.dumps(doc)[:80]}"]
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return "none", ['"apiVersion" and "kind" must be strings']
    if api_version.split("/")[0] == KSERVE_GROUP:
        version = api_version.split("/")[-1]
        model = getattr(kserve.models, f"{version.capitalize()}{kind}", None)
        if model is None or not hasattr(model, "openapi_types"):
            return "kserve", [f'KServe SDK has no model for kind "{kind}" in "{api_version}"']
        return "kserve", kserve.check_model(doc, model, "$")
    try:
        kubernetes_validate.validate(doc, kubernetes.version, strict=True)
    except kv_utils.ValidationError as error:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        return "kubernetes-validate", [f"${where}: {error.message}"]
    except kv_utils.SchemaNotFoundError as error:
        # kubernetes-validate itself only warns here; an unknown kind must not pass.
        return "kubernetes-validate", [error.message]
    return "kubernetes-validate", []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.34")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    kubernetes = KubernetesSchemas(args.kubernetes_version)
    kserve = KServeChecker(load_kserve_models(), kubernetes)
    documents = []
    for file in args.files:
        try:
            with open(file, encoding="utf-8") as handle:
                docs = [d for d in yaml.safe_load_all(handle) if d is not None]
        except (OSError, yaml.YAMLError) as error:
            documents.append({"file": file, "index": 0, "validator": "none", "errors": [
                f'Cannot read "{file}": {error}'
            ]})
            continue
        for index, doc in enumerate(docs):
            validator, errors = validate_document(doc, kubernetes, kserve)
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            documents.append({
                "file": file,
                "index": index,
                "apiVersion": doc.get("apiVersion") if isinstance(doc, dict) else None,
                "kind": doc.get("kind") if isinstance(doc, dict) else None,
                "name": meta.get("name") if isinstance(meta, dict) else None,
                "validator": validator,
                "errors": errors,
            })
    print(json.dumps({
        "kubernetes": kubernetes.version,
        "kubernetesValidate": importlib.metadata.version("kubernetes-validate"),
        "kserve": importlib.metadata.version("kserve"),
        "documents": documents,
    }))
    return 0 if documents and all(not d["errors"] for d in documents) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
