"""The ``omixa`` command line: the outermost layer, composing config, storage, engine and web.

Output meant for scripts is ``NAME=value`` lines on stdout; messages for people go to stderr.
Exit status: 0 success, 1 the check failed (``ledger verify``) or the server stopped on an
error, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from omixa.engine.accounts import Accounts, SigningUnavailable
from omixa.engine.catalog import CatalogError
from omixa.engine.cluster import WHOLE, Share
from omixa.engine.config import Config, ConfigError, storage_url
from omixa.engine.config_loader import load_config, resolve_config_path, structure_config
from omixa.engine.money import format_usd, parse_usd
from omixa.engine.secretbox import SECRET_KEY_ENV, secret_box_from_env
from omixa.storage import NotFound, Storage, StorageError, open_storage
from omixa.web import deployments_file
from omixa.web.logs import configure_logging

log = logging.getLogger("omixa.cli")


class UsageError(Exception):
    """Bad arguments; exit 2."""


def _load(path: str | None, *, serving: bool = False) -> Config:
    """The config named by --config / $OMIXA_CONFIG, else ``config/omixa.toml``; when none
    was named and that file does not exist, the defaults (SQLite ``omixa.db`` here). The log
    takes its ``[logging]`` from here on.

    Only a serving command resolves ``env:`` upstream keys: the others never call upstream.
    """
    file = resolve_config_path(path)
    if not (path or os.environ.get("OMIXA_CONFIG")) and not file.exists():
        config = structure_config({}, base_dir=Path.cwd())
    else:
        config = load_config(file, resolve_secrets=serving)
    configure_logging(config.logging)
    return config


def _run(main: Callable[..., Awaitable[int]], *args: Any) -> int:
    """``trio.run``, with a lone error out of the task tree's exception groups raised as
    itself, so the CLI maps it to a message and an exit status."""
    try:
        return trio.run(main, *args)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _with_storage(config: Config, work: Callable[[Storage], Awaitable[int]]) -> int:
    async def main() -> int:
        async with trio_asyncio.open_loop() as loop:
            async with open_storage(storage_url(config), loop=loop) as storage:
                return await work(storage)

    return _run(main)


def _print(**values: Any) -> None:
    for name, value in values.items():
        print(f"{name}={value}", flush=True)


# -- commands -----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from omixa.web.server import (
        Gateway,
        freeze_start_up_objects,
        limit_malloc_arenas,
        run_gateway,
        wait_for_signal,
    )  # loads only when serving

    config = _load(args.config, serving=True)
    workers = args.workers if args.workers is not None else config.server.workers
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.worker is None and workers > 1:
        return _supervise(args, config, workers)
    limit_malloc_arenas()
    path = resolve_config_path(args.config)
    config_path = path if path.exists() else None
    fd, share, shutdown_trigger = None, WHOLE, wait_for_signal
    if args.worker is not None:
        from omixa.web.workers import signal_or_orphaned

        index, count, fd = _worker_spec(args.worker)
        configure_logging(config.logging, worker=index)  # names the worker in every line
        share = WHOLE if config.cluster.redis_url else Share(index, count)
        shutdown_trigger = signal_or_orphaned

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            gateway: Gateway = await nursery.start(
                lambda task_status: run_gateway(
                    config,
                    host=args.host,
                    port=args.port,
                    config_path=config_path,
                    fd=fd,
                    share=share,
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
            )
            freeze_start_up_objects()
            if gateway.metrics_url is not None:
                _print(OMIXA_METRICS_URL=gateway.metrics_url)
            _print(OMIXA_BASE_URL=gateway.base_url)

    async def serve() -> int:
        await main()
        return 0

    return _run(serve)


def _supervise(args: argparse.Namespace, config: Config, workers: int) -> int:
    """``omixa serve --workers N`` (:mod:`web.workers`)."""
    from omixa.web.workers import Supervisor, listening_socket

    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    serve_args = ["--config", args.config] if args.config else []
    with listening_socket(host, port) as sock:
        supervisor = Supervisor(config, serve_args, workers, sock)

        async def main() -> int:
            async with trio.open_nursery() as nursery:
                root = await nursery.start(supervisor.run)
                if supervisor.metrics_url is not None:
                    _print(OMIXA_METRICS_URL=supervisor.metrics_url)
                _print(OMIXA_BASE_URL=f"{root}/api/v1")
            return 0

        try:
            return _run(main)
        except RuntimeError as exc:
            print(f"omixa: {exc}", file=sys.stderr)
            return 1


def _worker_spec(text: str) -> tuple[int, int, int]:
    try:
        index, count, fd = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--worker: expected INDEX/COUNT/FD, got {text!r}") from None
    if not 0 <= index < count:
        raise UsageError(f"--worker: index {index} is not below the count {count}")
    return index, count, fd


def cmd_demo(args: argparse.Namespace) -> int:
    from omixa.web.demo import run_demo

    return _run(run_demo, args.port, args.data_dir)


def cmd_add_deployment(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    deployments_file.add_azure_deployment(
        path,
        model=args.model,
        name=args.name,
        endpoint=args.endpoint,
        deployment=args.deployment,
        api_key=args.api_key,
        region=args.region,
        rpm=args.rpm,
        tpm=args.tpm,
        hourly_tokens=args.hourly_tokens,
        api_version=args.api_version,
        priority=args.priority,
        weight=args.weight,
    )
    print(f"added deployment {args.name!r} for {args.model} to {path}", file=sys.stderr)
    return 0


def cmd_add_vertex_deployment(args: argparse.Namespace) -> int:
    if bool(args.api_key) == bool(args.service_account_file):
        raise UsageError("give exactly one of --api-key and --service-account-file")
    path = resolve_config_path(args.config)
    deployments_file.add_vertex_deployment(
        path,
        model=args.model,
        name=args.name,
        location=args.location,
        project=args.project,
        api_key=args.api_key,
        service_account_file=args.service_account_file,
        vertex_model=args.vertex_model,
        endpoint=args.endpoint,
        rpm=args.rpm,
        tpm=args.tpm,
        hourly_tokens=args.hourly_tokens,
        weight=args.weight,
    )
    print(f"added deployment {args.name!r} for {args.model} to {path}", file=sys.stderr)
    return 0


def cmd_account_create(args: argparse.Namespace) -> int:
    async def work(storage: Storage) -> int:
        try:
            account = await Accounts(storage).create_account(args.email)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        _print(OMIXA_ACCOUNT_ID=account.id)
        return 0

    return _with_storage(_load(args.config), work)


def cmd_key_create(args: argparse.Namespace) -> int:
    box = secret_box_from_env()  # a malformed OMIXA_SECRET_KEY stops here (exit 2)

    async def work(storage: Storage) -> int:
        try:
            new = await Accounts(storage, box).create_key(
                args.account, rpm=args.rpm, tpm=args.tpm, signature_required=args.require_signature
            )
        except (ValueError, SigningUnavailable) as exc:
            raise UsageError(str(exc)) from None
        _print(OMIXA_KEY_ID=new.record.id, OMIXA_API_KEY=new.secret)
        if new.signing_secret is not None:
            _print(OMIXA_SIGNING_SECRET=new.signing_secret)
            print("Store the key and its signing secret now: they are not shown again.", file=sys.stderr)
        else:
            print("Store the key now: it is not shown again.", file=sys.stderr)
            print(
                f"{SECRET_KEY_ENV} is not set, so no signing secret was issued: this key cannot "
                f"sign requests until `omixa key rotate-secret {new.record.id}` is run with it set.",
                file=sys.stderr,
            )
        return 0

    return _with_storage(_load(args.config), work)


def cmd_key_rotate_secret(args: argparse.Namespace) -> int:
    box = secret_box_from_env()
    config = _load(args.config)
    grace = config.security.secret_grace_seconds if args.grace_seconds is None else args.grace_seconds

    async def work(storage: Storage) -> int:
        try:
            secret = await Accounts(storage, box).rotate_signing_secret(args.key_id, grace_seconds=grace)
        except SigningUnavailable as exc:
            raise UsageError(str(exc)) from None
        _print(OMIXA_SIGNING_SECRET=secret)
        print(
            "Store the signing secret now: it is not shown again. "
            + (
                f"The previous one keeps working for {grace:g} seconds."
                if grace > 0
                else "The previous one no longer works."
            ),
            file=sys.stderr,
        )
        return 0

    return _with_storage(config, work)


def cmd_key_revoke(args: argparse.Namespace) -> int:
    async def work(storage: Storage) -> int:
        if not await storage.revoke_api_key(args.key_id):
            raise NotFound(f"no key {args.key_id}")
        print(f"revoked {args.key_id}", file=sys.stderr)
        return 0

    return _with_storage(_load(args.config), work)


def cmd_top_up(args: argparse.Namespace) -> int:
    try:
        amount = parse_usd(args.amount)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if amount <= 0:
        raise UsageError("amount must be positive")

    async def work(storage: Storage) -> int:
        wallet = await storage.top_up(args.account, amount, note="cli top-up")
        _print(OMIXA_BALANCE=format_usd(wallet.balance))
        return 0

    return _with_storage(_load(args.config), work)


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    async def work(storage: Storage) -> int:
        problems = await storage.verify_ledger()
        for problem in problems:
            print(f"{problem.account_id}: {problem.message}", file=sys.stderr)
        print("ledger ok" if not problems else f"ledger broken: {len(problems)} problems", file=sys.stderr)
        return 0 if not problems else 1

    return _with_storage(_load(args.config), work)


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omixa", description="Omixa LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help: str, parent: Any = sub
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help)
        p.add_argument("--config", help="config file (default: $OMIXA_CONFIG, else config/omixa.toml)")
        p.set_defaults(func=func)
        return p

    p = command("serve", cmd_serve, "run the gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int, help="0 picks a free port")
    p.add_argument("--workers", type=int, help="gateway processes on this port (default: [server] workers, 1)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # INDEX/COUNT/FD: started by the supervisor

    p = sub.add_parser("demo", help="run with embedded SQLite, a simulated upstream and a funded key")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument("--data-dir", help="keep the demo database here (default: a new temporary folder)")
    p.set_defaults(func=cmd_demo)

    p = command("add-azure-deployment", cmd_add_deployment, "add an Azure OpenAI deployment to the config")
    for arg in ("model", "name", "endpoint", "deployment", "api_key"):
        p.add_argument(arg)
    p.add_argument("--region")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--hourly-tokens", type=int)
    p.add_argument("--api-version")
    p.add_argument("--priority", action="store_true", help="the deployment has Priority processing")
    p.add_argument("--weight", type=float)

    p = command("add-vertex-deployment", cmd_add_vertex_deployment, "add a Vertex Gemini deployment to the config")
    for arg in ("model", "name", "location"):
        p.add_argument(arg)
    p.add_argument("--project", help="Google Cloud project (default: the service account's)")
    p.add_argument("--api-key", help="express-mode API key, or env:NAME")
    p.add_argument("--service-account-file", help="service account JSON key file")
    p.add_argument("--vertex-model", help="Vertex model id (default: MODEL)")
    p.add_argument("--endpoint", help="base URL (default: from the location)")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--hourly-tokens", type=int)
    p.add_argument("--weight", type=float)

    account = sub.add_parser("account", help="accounts").add_subparsers(dest="action", required=True)
    p = command("create", cmd_account_create, "create an account", account)
    p.add_argument("email")

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    p = command("create", cmd_key_create, "create a key (printed once)", key)
    p.add_argument("account")
    p.add_argument("--rpm", type=int, help="requests per minute (default: [limits] key_rpm; 0: none)")
    p.add_argument("--tpm", type=int, help="tokens per minute (default: [limits] key_tpm; 0: none)")
    p.add_argument(
        "--require-signature",
        action="store_true",
        help="every request with this key must be signed (needs OMIXA_SECRET_KEY)",
    )
    p = command("revoke", cmd_key_revoke, "revoke a key at once", key)
    p.add_argument("key_id")
    p = command("rotate-secret", cmd_key_rotate_secret, "issue a new signing secret (printed once)", key)
    p.add_argument("key_id")
    p.add_argument(
        "--grace-seconds",
        type=float,
        help="how long the previous secret keeps working (default: [security] secret_grace_seconds; 0: not at all)",
    )

    wallet = sub.add_parser("wallet", help="wallets").add_subparsers(dest="action", required=True)
    p = command("top-up", cmd_top_up, "credit an account (USD)", wallet)
    p.add_argument("account")
    p.add_argument("amount")

    ledger = sub.add_parser("ledger", help="the ledger").add_subparsers(dest="action", required=True)
    command("verify", cmd_ledger_verify, "exit 0 only if every balance equals its ledger", ledger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()  # text at INFO until the command has read its config
    try:
        return args.func(args)
    except (UsageError, ConfigError, CatalogError, ValueError) as exc:
        print(f"omixa: {exc}", file=sys.stderr)
        return 2
    except NotFound as exc:
        print(f"omixa: not found: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"omixa: storage error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
