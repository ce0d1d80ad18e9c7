"""Editing the config file's ``[[deployments]]`` from the CLI, keeping the operator's comments.

tomlkit round-trips the file: comments, order and formatting of everything else stay as
they were. The file (and its folder) are created when missing. The new entry is checked
with the same rules as start-up (secrets named ``env:NAME`` are not resolved here: the
variable may only exist where the server runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit

from omixa.engine.catalog import load_catalog
from omixa.engine.config import DEFAULT_AZURE_API_VERSION, ConfigError
from omixa.engine.config_loader import structure_config


def add_azure_deployment(
    path: Path,
    *,
    model: str,
    name: str,
    endpoint: str,
    deployment: str,
    api_key: str,
    region: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    hourly_tokens: int | None = None,
    api_version: str | None = None,
    priority: bool = False,
    weight: float | None = None,
) -> None:
    """Append one Azure deployment. Errors: ConfigError (bad value, duplicate name, a
    model missing from the catalog, or an existing file that is not valid)."""
    entry: dict[str, Any] = {
        "name": name,
        "model": model,
        "provider": "azure",
        "endpoint": endpoint.rstrip("/"),
        "deployment": deployment,
        "api_key": api_key,
        "api_version": api_version or DEFAULT_AZURE_API_VERSION,
    }
    optional = {"region": region, "rpm": rpm, "tpm": tpm, "hourly_tokens": hourly_tokens, "weight": weight}
    entry.update({k: v for k, v in optional.items() if v is not None})
    if priority:
        entry["priority"] = True

    _append(path, entry)


def _append(path: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` as a ``[[deployments]]`` table, check the whole file, write it."""
    name = entry["name"]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    deployments = doc.get("deployments")
    if deployments is None:
        deployments = tomlkit.aot()
        doc.append("deployments", deployments)
    if any(d.get("name") == name for d in deployments):
        raise ConfigError(f"deployments: a deployment named {name!r} already exists in {path}")
    table = tomlkit.table()
    for key, value in entry.items():
        table.add(key, value)
    deployments.append(table)

    _check(doc, path, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")


def _check(doc: tomlkit.TOMLDocument, path: Path, entry: dict[str, Any]) -> None:
    model = entry["model"]
    # Check shape and values only; env: secrets resolve where the server runs.
    config = structure_config(doc.unwrap(), base_dir=path.resolve().parent, resolve_secrets=False)
    catalog_path = Path(config.base_dir) / config.catalog if config.catalog else None
    info = load_catalog(catalog_path).get(model)
    if info is None:
        raise ConfigError(f"model {model!r} is not in the catalog")
    if entry.get("priority") and info.priority_prices is None:
        raise ConfigError(f"--priority: model {model!r} has no priority prices in the catalog")
    provider = config.deployments[-1].provider
    if provider != info.provider:
        raise ConfigError(f"model {model!r} is a {info.provider} model, not {provider}")


def add_vertex_deployment(
    path: Path,
    *,
    model: str,
    name: str,
    location: str,
    project: str | None = None,
    api_key: str | None = None,
    service_account_file: str | None = None,
    vertex_model: str | None = None,
    endpoint: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    hourly_tokens: int | None = None,
    weight: float | None = None,
) -> None:
    """Append one Vertex Gemini deployment (auth: ``api_key`` or ``service_account_file``).

    The service account file is not read here (like ``env:`` keys, it may only exist where
    the server runs); a relative path is relative to the config file's folder.
    Errors: ConfigError, as :func:`add_azure_deployment`.
    """
    entry: dict[str, Any] = {"name": name, "model": model, "provider": "vertex", "location": location}
    optional = {
        "project": project, "api_key": api_key, "service_account_file": service_account_file,
        "deployment": vertex_model, "endpoint": endpoint.rstrip("/") if endpoint else None,
        "rpm": rpm, "tpm": tpm, "hourly_tokens": hourly_tokens, "weight": weight,
    }  # fmt: skip
    entry.update({k: v for k, v in optional.items() if v is not None})
    _append(path, entry)
