"""``cyxwiz chain``: the settlement chain as the operator sees it (backend, treasury, vaults).

solders and solana-py are imported inside the commands so ``cyxwiz --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cyxwiz.config import Settings

app = typer.Typer(
    help="The Solana settlement chain: local LiteSVM or a cluster over JSON-RPC.",
    no_args_is_help=True,
)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="CYXWIZ_DATA_DIR", help="Where the database, keys and blobs live."
    ),
]


def _settings(data_dir: Path | None) -> Settings:
    from cyxwiz.cli.main import load_settings

    return load_settings(data_dir)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


@app.command("info")
def info(data_dir: DataDir = None) -> None:
    """Backend, treasury, mints, vaults and their balances."""
    from cyxwiz.chain.factory import open_chain
    from cyxwiz.config import ConfigError
    from cyxwiz.errors import DomainError
    from cyxwiz.money import Currency, format_amount

    settings = _settings(data_dir)
    try:
        chain = open_chain(settings)
    except ConfigError as exc:
        raise _fail(f"configuration error: {exc}", 2) from None
    except DomainError as exc:
        raise _fail(f"error [{exc.code}]: {exc.detail}") from None
    try:
        if chain.backend == "local":
            where = str(settings.resolved_chain_dir)
            if settings.chain_serve_rpc and not settings.is_production:
                where += " (served at /chain/rpc by `cyxwiz serve`)"
        else:
            where = f"{settings.chain_rpc_url} (commitment {settings.chain_commitment})"
        typer.echo(f"backend:      {chain.backend}  {where}")
        typer.echo(f"block height: {chain.block_height()}")
        sol = chain.sol_balance(chain.treasury)
        typer.echo(f"treasury:     {chain.treasury}  {sol // 10**9}.{sol % 10**9:09d} SOL")
        for cur in Currency:
            vault = chain.vault_of(cur)
            balance = format_amount(chain.token_balance(vault), cur)
            typer.echo(f"{cur.value:<5} mint:   {chain.mint_of(cur)}")
            typer.echo(f"{cur.value:<5} vault:  {vault}  {balance}")
    except DomainError as exc:
        raise _fail(f"error [{exc.code}]: {exc.detail}") from None
    finally:
        chain.close()


@app.command("import-treasury")
def import_treasury(
    keypair_file: Annotated[
        Path, typer.Argument(help="A solana-keygen JSON keypair file (64 numbers).")
    ],
    data_dir: DataDir = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a different treasury already stored there.")
    ] = False,
) -> None:
    """Seal a solana-keygen keypair with the master key as the rpc backend's treasury
    (CYXWIZ_CHAIN_TREASURY_KEYPAIR, default <chain dir>/treasury.json)."""
    from cyxwiz.chain import tokens, treasury
    from cyxwiz.chain.rpc import treasury_path
    from cyxwiz.config import ChainBackend, ConfigError
    from cyxwiz.errors import DomainError

    settings = _settings(data_dir)
    try:
        kp = tokens.read_keypair(keypair_file)
    except DomainError as exc:
        raise _fail(f"error [{exc.code}]: {exc.detail}") from None
    path = treasury_path(settings)
    pubkey = str(kp.pubkey())
    if path.exists():
        try:
            current = str(
                treasury.unseal(
                    json.loads(path.read_text()), settings.master_keys, str(path)
                ).pubkey()
            )
        except (ConfigError, ValueError, OSError):
            current = "(unreadable)"
        if current == pubkey:
            typer.echo(f"treasury {pubkey} is already sealed in {path}")
            return
        if not force:
            hint = ""
            if settings.chain_backend is ChainBackend.local:
                hint = (
                    " It is the local chain's treasury (mint authority of its test mints): "
                    "point CYXWIZ_CHAIN_TREASURY_KEYPAIR elsewhere for the rpc backend."
                )
            raise _fail(
                f"{path} already holds treasury {current}; pass --force to replace it.{hint}"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(treasury.seal(kp, settings.master_keys), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    key_id = next(iter(settings.master_keys))
    typer.secho(f"sealed treasury {pubkey} into {path} (master key {key_id})", fg="green")
    typer.echo(
        "The plaintext keypair file is no longer needed by cyxwiz: keep it offline as a backup."
    )


@app.command("faucet")
def faucet(
    wallet: Annotated[str, typer.Option("--wallet", help="address to mint to")],
    usdc: Annotated[float, typer.Option("--usdc", help="test USDC to mint")] = 0.0,
    cyx: Annotated[float, typer.Option("--cyx", help="test CYX to mint")] = 0.0,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="CYXWIZ_URL", help="a running marketplace (default: base_url)"
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="CYXWIZ_TOKEN", help="your API token")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Dev chains only: mint test tokens (and SOL for fees) to a wallet, which then deposits
    through a Solana Pay request. Uses the local chain directly, or — while `cyxwiz serve` owns
    it — the server's faucet API (needs --token)."""
    from cyxwiz.chain.interfaces import ChainUnavailable
    from cyxwiz.config import ChainBackend
    from cyxwiz.errors import DomainError
    from cyxwiz.money import Currency, format_amount, parse_amount

    settings = _settings(data_dir)
    if settings.is_production or settings.chain_backend is not ChainBackend.local:
        raise _fail("the faucet mints on the local dev chain only", 2)
    wanted = [
        (cur, parse_amount(repr(value), cur))
        for cur, value in ((Currency.USDC, usdc), (Currency.CYX, cyx))
        if value > 0
    ]
    if not wanted:
        raise _fail("ask for something: --usdc N and/or --cyx N", 2)
    try:
        from cyxwiz.chain.local import LocalChain

        chain = LocalChain(directory=settings.resolved_chain_dir, master_keys=settings.master_keys)
    except ChainUnavailable:
        chain = None
    except DomainError as exc:
        raise _fail(f"error [{exc.code}]: {exc.detail}") from None
    if chain is not None:
        from cyxwiz.billing.treasury import dev_faucet

        try:
            for cur, amount in wanted:
                sig, _ = dev_faucet(
                    settings=settings, chain=chain, wallet=wallet, currency=cur, amount=amount
                )
                typer.echo(f"minted {format_amount(amount, cur)} to {wallet}: {sig}")
        except DomainError as exc:
            raise _fail(f"error [{exc.code}]: {exc.detail}") from None
        finally:
            chain.close()
        return
    import httpx

    if not token:
        raise _fail(
            "a running `cyxwiz serve` owns the local chain: pass --token (or CYXWIZ_TOKEN) to "
            "use its faucet API",
            2,
        )
    base = (url or settings.base_url).rstrip("/")
    for cur, amount in wanted:
        r = httpx.post(
            f"{base}/api/v1/chain/faucet",
            json={"wallet": wallet, "currency": cur.value, "amount": amount},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        if r.status_code != 201:
            body = r.json() if "json" in r.headers.get("content-type", "") else {}
            raise _fail(f"error [{body.get('code', r.status_code)}]: {body.get('detail', r.text)}")
        typer.echo(f"minted {format_amount(amount, cur)} to {wallet}: {r.json()['signature']}")


@app.command("watch")
def watch(
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit")] = False,
    data_dir: DataDir = None,
) -> None:
    """Credit deposits and send/confirm payouts (what `serve` does in the background) — for
    operators running the settlement worker apart from the web replicas."""
    import time

    from cyxwiz.billing.deposits import watch_once
    from cyxwiz.billing.payouts import process_payouts
    from cyxwiz.chain.factory import open_chain
    from cyxwiz.clock import SystemClock
    from cyxwiz.db import Database
    from cyxwiz.errors import DomainError

    settings = _settings(data_dir)
    try:
        chain = open_chain(settings)
    except DomainError as exc:
        raise _fail(
            f"error [{exc.code}]: {exc.detail} — with the local backend, the running `cyxwiz "
            "serve` already watches its chain"
        ) from None
    db = Database.from_url(settings.resolved_database_url)
    clock = SystemClock()
    try:
        while True:
            now = clock.now()
            credited = watch_once(db, settings=settings, chain=chain, now=now)
            counts = process_payouts(db, settings=settings, chain=chain, now=now)
            typer.echo(f"{now.isoformat()} deposits credited {credited}, payouts {counts}")
            if once:
                return
            time.sleep(settings.chain_watch_interval_seconds)
    except KeyboardInterrupt:
        return
    finally:
        chain.close()
        db.engine.dispose()


@app.command("float")
def record_float_cmd(
    cyx: Annotated[float, typer.Option("--cyx", help="dev chain: mint this much CYX float")] = 0.0,
    signature: Annotated[
        str | None,
        typer.Option(
            "--signature", help="book a transfer you made into the vault as platform funds"
        ),
    ] = None,
    currency: Annotated[str, typer.Option("--currency")] = "CYX",
    data_dir: DataDir = None,
) -> None:
    """Book platform funds in the vault (the CYX float that pays CYX payouts)."""
    from cyxwiz.billing.treasury import record_float
    from cyxwiz.chain.factory import open_chain
    from cyxwiz.db import Database
    from cyxwiz.errors import DomainError
    from cyxwiz.money import Currency, format_amount, parse_amount, to_currency

    settings = _settings(data_dir)
    cur = Currency.CYX if cyx > 0 else to_currency(currency)
    try:
        chain = open_chain(settings)
    except DomainError as exc:
        raise _fail(f"error [{exc.code}]: {exc.detail}") from None
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.session() as session:
            t = record_float(
                session,
                chain=chain,
                currency=cur,
                signature=signature,
                mint_amount=parse_amount(repr(cyx), cur) if cyx > 0 else None,
            )
            typer.echo(f"booked {format_amount(t.amount, cur)} of platform {cur.value} float")
    except DomainError as exc:
        raise _fail(f"error [{exc.code}]: {exc.detail}") from None
    finally:
        chain.close()
        db.engine.dispose()
