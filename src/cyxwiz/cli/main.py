"""The ``cyxwiz`` command: one Typer sub-app per noun. Heavy imports happen inside commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyxwiz.cli.chain import app as chain_app
from cyxwiz.cli.verify import verify as verify_cmd
from cyxwiz.cli.wallet import app as wallet_app

if TYPE_CHECKING:
    from cyxwiz.config import Settings

app = typer.Typer(
    name="cyxwiz",
    help="CyxWiz Model Marketplace: the App Store for AI models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
user_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)
billing_app = typer.Typer(help="Money flows run by operators.", no_args_is_help=True)
operators_app = typer.Typer(
    help="Node operators: the trust tier allowed to run inference nodes (admin).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(ledger_app, name="ledger")
app.add_typer(billing_app, name="billing")
app.add_typer(operators_app, name="operators")
app.add_typer(wallet_app, name="wallet")
app.add_typer(chain_app, name="chain")
app.command("verify")(verify_cmd)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="CYXWIZ_DATA_DIR", help="Where the database, keys and blobs live."
    ),
]


def load_settings(data_dir: Path | None) -> Settings:
    from cyxwiz.config import ConfigError, Settings

    try:
        settings = Settings(data_dir=data_dir) if data_dir else Settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        _ = settings.master_keys  # fail early on a bad or placeholder key
    except ConfigError as exc:
        typer.secho(f"configuration error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    return settings


def _upgrade(settings: Settings) -> None:
    from cyxwiz.db import make_engine
    from cyxwiz.migrate import upgrade

    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    demo: Annotated[
        bool, typer.Option("--demo", help="Build the demo catalogue if the database is empty.")
    ] = False,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    node: Annotated[
        bool,
        typer.Option(
            "--node/--no-node",
            envvar="CYXWIZ_LOCAL_NODE",
            help="Start one local inference node (a `cyxwiz node` subprocess).",
        ),
    ] = True,
    node_port: Annotated[
        int,
        typer.Option(
            envvar="CYXWIZ_LOCAL_NODE_PORT", help="The local node's port (default PORT+1)."
        ),
    ] = 0,
) -> None:
    """Run the marketplace (migrates the database first) and, by default, one local
    inference node, so hosted inference works out of the box."""
    import os

    import uvicorn

    settings = load_settings(data_dir)
    if "CYXWIZ_BASE_URL" not in os.environ:  # links, SIWS domain, Solana Pay and RPC URLs
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        settings.base_url = f"http://{shown}:{port}"
        os.environ["CYXWIZ_BASE_URL"] = settings.base_url  # worker processes read it too
    if workers > 1 and settings.chain_backend.value == "local":
        typer.secho(
            "the local chain is owned by one process: use --workers 1, or settle on a cluster "
            "(CYXWIZ_CHAIN_BACKEND=rpc) to run several workers",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    _upgrade(settings)
    if demo:
        from cyxwiz.demo.seed import seed_if_empty

        # Seeding funds the demo buyers by deposits on the chain this server settles on; it
        # opens the (process-exclusive) local chain and closes it before the app opens it.
        seed_if_empty(settings, echo=typer.echo)
    typer.secho(f"CyxWiz Marketplace on http://{host}:{port}  (API docs: /docs)", fg="green")
    local = None
    if node and settings.is_production:
        typer.echo("production: no local node (run `cyxwiz node` on your node hosts)")
    elif node:
        local = _start_local_node(settings, host=host, port=port, node_port=node_port or port + 1)
        _exit_on_sigterm()  # uvicorn re-raises SIGTERM after its shutdown: run `finally` below
    try:
        if workers > 1:
            os.environ["CYXWIZ_DATA_DIR"] = str(settings.data_dir)
            uvicorn.run(
                "cyxwiz.web.asgi:app",
                host=host,
                port=port,
                workers=workers,
                log_level="info",
                server_header=False,  # no "Server: uvicorn" banner
                proxy_headers=False,  # X-Forwarded-For: CYXWIZ_TRUSTED_PROXY_COUNT decides
            )
            return
        from cyxwiz.web.app import create_app

        uvicorn.run(
            create_app(settings, run_scheduler=True),
            host=host,
            port=port,
            log_level="info",
            server_header=False,  # no "Server: uvicorn" banner
            proxy_headers=False,  # X-Forwarded-For: CYXWIZ_TRUSTED_PROXY_COUNT decides
        )
    finally:
        if local is not None:
            _stop_process(local)


LOCAL_OPERATOR = "local-node-operator"
LOCAL_NODE = "local"
LOCAL_TRUST_REASON = "the platform's own local node, trusted by configuration (cyxwiz serve)"


def _trust_local_operator(session: Any, operator: Any) -> Any:
    """Approve ``serve``'s own operator account, as the platform (no admin involved)."""
    from cyxwiz.clock import SystemClock
    from cyxwiz.inference import service as nodes

    return nodes.decide_operator(
        session,
        user=operator,
        decision="approve",
        actor=None,
        now=SystemClock().now(),
        reason=LOCAL_TRUST_REASON,
    )


def _start_local_node(settings: Settings, *, host: str, port: int, node_port: int) -> Any:
    """Create (once) the system operator and its node, rotate the node's token (the old one
    dies), and spawn ``cyxwiz node`` with the token in its environment.

    The local node is trusted by configuration (``serve`` starts it; production never does),
    not by anyone's claim: ``serve`` approves the operator account it created itself, in the
    same transaction, recorded as the platform's decision. An account of that name it did not
    create (no such platform approval on record) is not trusted: no local node then, and a
    hint to approve it with ``cyxwiz operators approve`` if it is yours. An admin's later
    revocation is respected.
    """
    import os
    import secrets
    import subprocess
    import sys

    from sqlalchemy import select

    from cyxwiz.accounts import service as accounts
    from cyxwiz.accounts.models import User
    from cyxwiz.db import Database
    from cyxwiz.inference import service as nodes
    from cyxwiz.inference.models import Node

    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.session() as session:
            operator = session.scalar(select(User).where(User.username == LOCAL_OPERATOR))
            if operator is None:
                operator = accounts.register(
                    session,
                    username=LOCAL_OPERATOR,
                    email=f"{LOCAL_OPERATOR}@localhost.invalid",
                    password=secrets.token_urlsafe(32),  # never used: nobody logs in as it
                    display_name="Local inference node",
                )
                _trust_local_operator(session, operator)
            record = nodes.operator_record(session, user_id=operator.id)
            if (
                record is not None
                and record.status == "applied"
                and record.statement == nodes.MIGRATED_OPERATOR_STATEMENT
                and operator.email == f"{LOCAL_OPERATOR}@localhost.invalid"
            ):
                # A data dir from before operator approval existed: migration 0007 filed this
                # server's own operator (created above by an earlier `serve`) as a pending
                # application like every other operator. It is still ours: trust it again.
                record = _trust_local_operator(session, operator)
            if record is None or record.status != "approved":
                typer.secho(
                    f"no local node: the account {LOCAL_OPERATOR!r} is not an approved node "
                    f"operator (status: {record.status if record else 'never applied'}); if it "
                    f"is this server's own, run `cyxwiz operators approve {LOCAL_OPERATOR}`",
                    fg="yellow",
                    err=True,
                )
                return None
            found = session.scalar(
                select(Node).where(
                    Node.operator_id == operator.id,
                    Node.name == LOCAL_NODE,
                    Node.deleted_at.is_(None),
                )
            )
            if found is None:
                token, _ = nodes.create_node(session, operator=operator, name=LOCAL_NODE)
            else:
                token = nodes.rotate_token(session, node=found, actor=operator)
    finally:
        db.engine.dispose()
    market_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    if ":" in market_host:
        market_host = f"[{market_host}]"
    env = {**os.environ, "CYXWIZ_NODE_TOKEN": token}
    cmd = [
        sys.executable,
        "-m",
        "cyxwiz",
        "node",
        "--marketplace",
        f"http://{market_host}:{port}",
        "--host",
        "127.0.0.1",
        "--port",
        str(node_port),
        "--cache-dir",
        str(settings.data_dir / "node-cache"),
    ]
    typer.secho(f"local inference node on http://127.0.0.1:{node_port}", fg="green")
    return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None
    )


def _die_with_parent() -> None:
    """In the node's process (Linux): get SIGTERM when `serve` dies, even by SIGKILL."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _exit_on_sigterm() -> None:
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def _stop_process(proc: Any, timeout: float = 10.0) -> None:
    import subprocess

    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@app.command("demo")
def demo_cmd(data_dir: DataDir = None) -> None:
    """Build the demo catalogue: creators and real trained ONNX models with measured cards."""
    from cyxwiz.demo.seed import seed

    settings = load_settings(data_dir)
    _upgrade(settings)
    seed(settings, echo=typer.echo)


@app.command("node")
def node_cmd(
    token: Annotated[
        str,
        typer.Option(
            envvar="CYXWIZ_NODE_TOKEN",
            help="The node token (cxw_nt_...) from POST /api/v1/nodes. Prefer the env var.",
        ),
    ],
    marketplace: Annotated[
        str, typer.Option(envvar="CYXWIZ_NODE_MARKETPLACE", help="The marketplace's base URL.")
    ] = "http://127.0.0.1:8000",
    host: Annotated[
        str, typer.Option(envvar="CYXWIZ_NODE_HOST", help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CYXWIZ_NODE_PORT", help="TCP port.")] = 8801,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            envvar="CYXWIZ_NODE_ADVERTISE_URL",
            help="Where the gateway reaches this node (default http://HOST:PORT).",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="CYXWIZ_NODE_CACHE_DIR",
            help="Encrypted model cache (default ~/.cache/cyxwiz/node).",
        ),
    ] = None,
    max_model_bytes: Annotated[
        int | None,
        typer.Option(
            envvar="CYXWIZ_NODE_MAX_MODEL_BYTES", help="Bytes of warm models kept in memory."
        ),
    ] = None,
    max_cache_bytes: Annotated[
        int | None,
        typer.Option(
            envvar="CYXWIZ_NODE_MAX_CACHE_BYTES", help="Bytes of encrypted blobs on disk."
        ),
    ] = None,
    capacity: Annotated[
        int | None,
        typer.Option(
            envvar="CYXWIZ_NODE_CAPACITY", help="Inferences run at once (default: CPU count)."
        ),
    ] = None,
    max_request_bytes: Annotated[
        int | None,
        typer.Option(
            envvar="CYXWIZ_NODE_MAX_REQUEST_BYTES", help="Largest infer body (default 16 MiB)."
        ),
    ] = None,
) -> None:
    """Run an inference node: register with the marketplace, serve assigned models (KServe v2)."""
    import uvicorn

    from cyxwiz.node.app import create_node_app
    from cyxwiz.node.config import NodeConfig

    if not token.startswith("cxw_nt_"):
        typer.secho("error: --token must be a node token (cxw_nt_...)", fg="red", err=True)
        raise typer.Exit(2)
    defaults = NodeConfig(marketplace_url=marketplace, token=token)
    config = NodeConfig(
        marketplace_url=marketplace,
        token=token,
        host=host,
        port=port,
        advertise_url=advertise_url,
        cache_dir=cache_dir or defaults.cache_dir,
        max_model_bytes=max_model_bytes or defaults.max_model_bytes,
        max_cache_bytes=max_cache_bytes or defaults.max_cache_bytes,
        capacity=capacity or defaults.capacity,
        max_request_bytes=max_request_bytes or defaults.max_request_bytes,
    )
    typer.secho(
        f"CyxWiz node on http://{host}:{port} (advertised as {config.url}), "
        f"marketplace {marketplace}",
        fg="green",
    )
    from cyxwiz.node.runtime import enter_workdir

    agent = create_node_app(config)  # resolves its paths before the chdir below
    enter_workdir(agent.workdir)  # an empty private cwd: nothing for a model to reach
    uvicorn.run(agent, host=host, port=port, log_level="info", access_log=False)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply all migrations and sync the category taxonomy."""
    from cyxwiz.db import make_engine
    from cyxwiz.migrate import current_revision

    settings = load_settings(data_dir)
    _upgrade(settings)
    engine = make_engine(settings.resolved_database_url)
    typer.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


@db_app.command("check")
def db_check(data_dir: DataDir = None) -> None:
    """Exit 1 if the database schema differs from the models (migration drift)."""
    from cyxwiz.db import make_engine
    from cyxwiz.migrate import drift

    settings = load_settings(data_dir)
    engine = make_engine(settings.resolved_database_url)
    diffs = drift(engine)
    engine.dispose()
    if diffs:
        for d in diffs:
            typer.echo(f"drift: {d}", err=True)
        raise typer.Exit(1)
    typer.echo("schema matches the models: no drift")


@user_app.command("create")
def user_create(
    username: str,
    email: Annotated[str, typer.Option(help="Email address.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="CYXWIZ_NEW_USER_PASSWORD",
        ),
    ],
    admin: Annotated[bool, typer.Option("--admin", help="Give the user the admin role.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a user account (use --admin for an administrator)."""
    from cyxwiz.accounts.service import register
    from cyxwiz.db import Database
    from cyxwiz.errors import DomainError

    settings = load_settings(data_dir)
    _upgrade(settings)
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.session() as session:
            user = register(
                session,
                username=username,
                email=email,
                password=password,
                role="admin" if admin else "user",
            )
            typer.echo(f"created {user.role} {user.username} ({user.id})")
    except DomainError as exc:
        typer.secho(f"error [{exc.code}]: {exc.detail}", fg="red", err=True)
        raise typer.Exit(1) from None
    finally:
        db.engine.dispose()


@ledger_app.command("check")
def ledger_check(
    data_dir: DataDir = None,
    chain: Annotated[
        bool, typer.Option("--chain/--no-chain", help="also reconcile the vaults on chain")
    ] = True,
) -> None:
    """Prove the ledger's invariants per currency and reconcile each vault's on-chain balance
    with what the ledger says it holds; exit 1 with a report if anything is off."""
    from cyxwiz.billing.treasury import VaultReport, reconcile
    from cyxwiz.chain.interfaces import ChainUnavailable
    from cyxwiz.db import Database
    from cyxwiz.ledger.service import check
    from cyxwiz.money import format_amount

    settings = load_settings(data_dir)
    db = Database.from_url(settings.resolved_database_url)
    vaults: list[VaultReport] = []
    try:
        with db.session() as session:
            report = check(session)
            if chain:
                try:
                    view = _chain_view(settings)
                except ChainUnavailable as exc:
                    typer.echo(f"  chain: not reconciled ({exc.detail})")
                else:
                    try:
                        vaults = reconcile(session, chain=view)
                    finally:
                        view.close()
    finally:
        db.engine.dispose()
    for v in vaults:
        typer.echo(
            f"  vault {v.currency}: on chain {format_amount(v.on_chain, v.currency)}, "
            f"ledger {format_amount(v.ledger_posted, v.currency)}"
            + (f" (+{format_amount(v.incoming, v.currency)} incoming)" if v.incoming else "")
            + (f" (-{format_amount(v.outgoing, v.currency)} paying out)" if v.outgoing else "")
        )
        problem = v.problem()
        if problem:
            report.problems.append(problem)
    typer.echo(f"{report.accounts} accounts, {report.transfers} transfers")
    for cur, sums in sorted(report.currencies.items()):
        typer.echo(
            f"  {cur}: posted {format_amount(sums['debits_posted'], cur)} both sides, "
            f"pending {format_amount(sums['debits_pending'], cur)}"
        )
    if not report.ok:
        for problem in report.problems:
            typer.secho(f"PROBLEM: {problem}", fg="red", err=True)
        raise typer.Exit(1)
    typer.secho("ledger check: clean", fg="green")


def _chain_view(settings: Settings) -> Any:
    """The chain to reconcile against: the configured one, or — when a running server owns
    the local chain — a read-only view of its persisted state."""
    from cyxwiz.chain.factory import open_chain
    from cyxwiz.chain.interfaces import ChainUnavailable
    from cyxwiz.chain.local import LocalChainSnapshot
    from cyxwiz.config import ChainBackend

    if settings.chain_backend is ChainBackend.local:
        if not (settings.resolved_chain_dir / "chain.sqlite").exists():
            raise ChainUnavailable("no local chain has been created yet")
        try:
            return open_chain(settings)
        except ChainUnavailable:
            return LocalChainSnapshot(settings.resolved_chain_dir)
    return open_chain(settings)


@billing_app.command("release")
def billing_release(data_dir: DataDir = None) -> None:
    """Release escrow of every purchase whose refund window has closed (idempotent, safe to
    run while `serve` runs its own scheduler)."""
    from cyxwiz.billing.flows import release_due
    from cyxwiz.clock import SystemClock
    from cyxwiz.db import Database

    settings = load_settings(data_dir)
    _upgrade(settings)
    db = Database.from_url(settings.resolved_database_url)
    total = 0
    try:
        while True:
            with db.session() as session:
                n = release_due(session, now=SystemClock().now())
            total += n
            if n == 0:
                break
    finally:
        db.engine.dispose()
    typer.echo(f"released escrow for {total} purchases")


@billing_app.command("sweep")
def billing_sweep(data_dir: DataDir = None) -> None:
    """Settle metering reservations left pending by a process that died: charge their stored
    usage events, release the rest (idempotent, safe to run while `serve` sweeps too)."""
    from cyxwiz.db import Database
    from cyxwiz.inference.metering import SweepReport, sweep_reservations

    settings = load_settings(data_dir)
    _upgrade(settings)
    db = Database.from_url(settings.resolved_database_url)
    total = SweepReport()
    try:
        while True:
            report = sweep_reservations(db, settings)
            total.settled += report.settled
            total.released += report.released
            total.skipped += report.skipped
            for cur, amount in report.charged.items():
                total.charged[cur] += amount
            if not report.swept:
                break
    finally:
        db.engine.dispose()
    charged = ", ".join(f"{amount} {cur}" for cur, amount in sorted(total.charged.items()))
    typer.echo(
        f"swept {total.swept} reservations: {total.settled} settled"
        f"{f' (charged {charged} minor units)' if charged else ''}, {total.released} released;"
        f" {total.skipped} still held by a live process"
    )


@operators_app.command("list")
def operators_list(
    status: Annotated[
        str | None,
        typer.Option(help="Only this status: applied, approved, rejected or revoked."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """List node operator applications and standings (pending first by age)."""
    from sqlalchemy import select

    from cyxwiz.db import Database
    from cyxwiz.inference.models import OPERATOR_STATUSES, NodeOperator

    if status is not None and status not in OPERATOR_STATUSES:
        typer.secho(f"error: --status must be one of {', '.join(OPERATOR_STATUSES)}", err=True)
        raise typer.Exit(2)
    settings = load_settings(data_dir)
    _upgrade(settings)
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.session() as session:
            query = select(NodeOperator).order_by(NodeOperator.applied_at, NodeOperator.created_at)
            if status is not None:
                query = query.where(NodeOperator.status == status)
            rows = list(session.scalars(query))
            for row in rows:
                by = row.decided_by.username if row.decided_by is not None else "platform"
                decided = f" by {by} {row.decided_at:%Y-%m-%d %H:%M}" if row.decided_at else ""
                typer.echo(f"{row.user.username:<39} {row.status:<9}{decided}")
                if row.statement:
                    typer.echo(f"    statement: {row.statement[:200]}")
                if row.reason:
                    typer.echo(f"    reason: {row.reason}")
            if not rows:
                typer.echo("no node operators")
    finally:
        db.engine.dispose()


def _decide_operator(decision: str, username: str, reason: str, data_dir: Path | None) -> None:
    from cyxwiz.accounts.service import get_user_by_username
    from cyxwiz.clock import SystemClock
    from cyxwiz.db import Database
    from cyxwiz.errors import DomainError
    from cyxwiz.inference import service as nodes

    settings = load_settings(data_dir)
    _upgrade(settings)
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.session() as session:
            user = get_user_by_username(session, username)
            row = nodes.decide_operator(
                session,
                user=user,
                decision=decision,
                actor=None,  # the platform itself: whoever runs this holds the database
                now=SystemClock().now(),
                reason=reason,
            )
            typer.echo(f"{user.username}: {row.status}")
    except DomainError as exc:
        typer.secho(f"error [{exc.code}]: {exc.detail}", fg="red", err=True)
        raise typer.Exit(1) from None
    finally:
        db.engine.dispose()


Reason = Annotated[str, typer.Option(help="Why (shown to the user).")]


@operators_app.command("approve")
def operators_approve(username: str, reason: Reason = "", data_dir: DataDir = None) -> None:
    """Let USERNAME run inference nodes (with or without an application)."""
    _decide_operator("approve", username, reason, data_dir)


@operators_app.command("reject")
def operators_reject(username: str, reason: Reason = "", data_dir: DataDir = None) -> None:
    """Turn down USERNAME's pending application."""
    _decide_operator("reject", username, reason, data_dir)


@operators_app.command("revoke")
def operators_revoke(username: str, reason: Reason = "", data_dir: DataDir = None) -> None:
    """Withdraw USERNAME's approval: their nodes leave routing and lose key access at once
    (running servers drop them from routing within their node-table refresh)."""
    _decide_operator("revoke", username, reason, data_dir)


def run() -> None:
    app()
