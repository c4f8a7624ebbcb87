"""``cyxwiz wallet``: a small Solana wallet for users and tests.

A keypair file like solana-keygen's, balances, paying a Solana Pay transfer request and linking
the wallet to a marketplace account by Sign-In With Solana. solders, solana-py and httpx are
imported inside the commands so ``cyxwiz --help`` stays fast.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

import typer

from cyxwiz.errors import DomainError

if TYPE_CHECKING:
    import asyncio

    import httpx
    from solana.rpc.async_api import AsyncClient
    from solders.keypair import Keypair

    from cyxwiz.chain.solana_pay import TransferRequest

T = TypeVar("T")

app = typer.Typer(
    help="Your Solana wallet: keypair file, balances, Solana Pay, sign-in to the marketplace.",
    no_args_is_help=True,
)

DEFAULT_URL = "http://127.0.0.1:8000"
FEE_RESERVE_LAMPORTS = 10_000  # a legacy transfer with one signature costs 5,000 lamports
SOL_DECIMALS = 9


def default_keypair_path() -> Path:
    """$CYXWIZ_WALLET, else ~/.config/cyxwiz/id.json."""
    env = os.environ.get("CYXWIZ_WALLET")
    return Path(env).expanduser() if env else Path.home() / ".config" / "cyxwiz" / "id.json"


KeypairOpt = Annotated[
    Path | None,
    typer.Option(
        "--keypair",
        "-k",
        help="Keypair file (default: $CYXWIZ_WALLET or ~/.config/cyxwiz/id.json).",
        show_default=False,
    ),
]
UrlOpt = Annotated[
    str, typer.Option("--url", "-u", envvar="CYXWIZ_URL", help="The marketplace's base URL.")
]
RpcOpt = Annotated[
    str | None,
    typer.Option(
        "--rpc-url", help="Solana JSON-RPC URL (default: the marketplace's, from /api/v1/chain)."
    ),
]


class WalletError(DomainError):
    code = "wallet_error"
    status = 400
    title = "Wallet error"


class InsufficientFunds(WalletError):
    code = "insufficient_funds"
    title = "Insufficient funds"


# ---------------------------------------------------------------- output helpers


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _load_keypair(path: Path | None) -> Keypair:
    from cyxwiz.chain.tokens import read_keypair

    target = (path or default_keypair_path()).expanduser()
    try:
        return read_keypair(target)
    except DomainError as exc:
        hint = " (create one with `cyxwiz wallet new`)" if exc.code == "keypair_not_found" else ""
        _fail(exc.detail + hint)


def _units(amount: int, decimals: int) -> str:
    whole, frac = divmod(amount, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}".rstrip("0").rstrip(".")


def _http(url: str, token: str | None = None) -> httpx.Client:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30.0)


def _api(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer of one API call; a problem+json error exits with its code and detail."""
    import httpx

    try:
        r = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the marketplace at {client.base_url}: {exc}")
    if r.status_code >= 400:
        try:
            body = r.json()
            _fail(f"{body.get('code', r.status_code)}: {body.get('detail', r.text)}")
        except ValueError:
            _fail(f"HTTP {r.status_code} from {path}: {r.text[:200]}")
    return r.json()


def _chain_info(url: str) -> dict[str, Any] | None:
    """GET /api/v1/chain (backend, rpc_url, treasury, mints, vaults), or None if unreachable."""
    import httpx

    try:
        with _http(url) as c:
            r = c.get("/api/v1/chain")
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    info: dict[str, Any] = r.json()
    if info.get("rpc_url"):
        info["rpc_url"] = urljoin(url.rstrip("/") + "/", str(info["rpc_url"]))
    return info


# ---------------------------------------------------------------- the chain, as the CLI sees it


class WalletChain(Protocol):
    """What paying and balances need from a cluster (``LocalChain`` has the same methods)."""

    def latest_blockhash(self) -> tuple[str, int]: ...

    def send_raw(self, raw: bytes) -> str: ...

    def statuses(self, signatures: list[str]) -> list[str | None]: ...

    def block_height(self) -> int: ...

    def sol_balance(self, address: str) -> int: ...

    def token_balance(self, token_account: str) -> int: ...


class RpcWallet:
    """A cluster over JSON-RPC through solana-py (its client is async: one private loop)."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        import asyncio

        from solana.rpc.commitment import Confirmed

        self.url = url
        self._runner: asyncio.Runner = asyncio.Runner()
        self._client: AsyncClient = self._runner.run(
            _make_client(url, timeout=timeout, commitment=Confirmed)
        )

    def _run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        from solana.exceptions import SolanaRpcException

        try:
            return self._runner.run(fn())
        except SolanaRpcException as exc:
            from cyxwiz.chain.interfaces import ChainUnavailable

            raise ChainUnavailable(f"the Solana RPC at {self.url} did not answer: {exc}") from None

    def latest_blockhash(self) -> tuple[str, int]:
        resp = self._run(self._client.get_latest_blockhash)
        return str(resp.value.blockhash), int(resp.value.last_valid_block_height)

    def send_raw(self, raw: bytes) -> str:
        from solana.rpc.commitment import Confirmed
        from solana.rpc.core import RPCException
        from solana.rpc.models import TxOpts

        from cyxwiz.chain.interfaces import BlockhashExpired, TransactionRejected

        opts = TxOpts(preflight_commitment=Confirmed)
        try:
            resp = self._run(lambda: self._client.send_raw_transaction(raw, opts))
        except RPCException as exc:
            text = _rpc_error_text(exc)
            low = text.lower()
            if "blockhash not found" in low or "blockhashnotfound" in low:
                raise BlockhashExpired(
                    "the transaction's blockhash has expired; fetch a new one and sign again"
                ) from None
            if "insufficient funds" in low or "insufficient lamports" in low:
                raise InsufficientFunds(f"the cluster refused the payment: {text}") from None
            raise TransactionRejected(text[:500]) from None
        return str(resp.value)

    def statuses(self, signatures: list[str]) -> list[str | None]:
        from solders.signature import Signature

        sigs = [Signature.from_string(s) for s in signatures]
        resp = self._run(lambda: self._client.get_signature_statuses(sigs))
        out: list[str | None] = []
        for st in resp.value:
            if st is None:
                out.append(None)
            elif st.err is not None:
                out.append("failed")
            elif st.confirmation_status is None:
                out.append("processed")
            else:
                out.append(str(st.confirmation_status).rsplit(".", 1)[-1].lower())
        return out

    def block_height(self) -> int:
        return int(self._run(self._client.get_block_height).value)

    def sol_balance(self, address: str) -> int:
        from cyxwiz.chain.tokens import pubkey

        key = pubkey(address)
        return int(self._run(lambda: self._client.get_balance(key)).value)

    def token_balance(self, token_account: str) -> int:
        from solana.rpc.core import RPCException

        from cyxwiz.chain.tokens import pubkey

        key = pubkey(token_account)
        try:
            resp = self._run(lambda: self._client.get_token_account_balance(key))
        except RPCException:  # no such account: nothing held
            return 0
        return int(resp.value.amount)

    def close(self) -> None:
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.close()


async def _make_client(url: str, *, timeout: float, commitment: Any) -> AsyncClient:
    from solana.rpc.async_api import AsyncClient

    return AsyncClient(url, commitment=commitment, timeout=timeout, http2=False)


def _rpc_error_text(exc: Exception) -> str:
    err = exc.args[0] if exc.args else exc
    message = str(getattr(err, "message", "") or err)
    data = getattr(err, "data", None)
    logs = getattr(data, "logs", None) or []
    return "; ".join([message, *[str(line) for line in logs if "rror" in str(line)]])


# ---------------------------------------------------------------- paying and balances


def balances(chain: WalletChain, owner: str, mints: dict[str, str]) -> dict[str, int]:
    """SOL (lamports) and each named token (base units) held by ``owner``."""
    from cyxwiz.chain.tokens import ata

    out = {"SOL": chain.sol_balance(owner)}
    for name, mint in mints.items():
        out[name] = chain.token_balance(ata(owner, mint))
    return out


def build_payment(payer: Keypair, req: TransferRequest, amount: int) -> list[Any]:
    """The instructions a Solana Pay SPL transfer request asks for: the memo (if any), then
    transferChecked between the associated token accounts, references as read-only keys."""
    from cyxwiz.chain import tokens

    if req.spl_token is None:
        raise WalletError(
            "only SPL token requests (spl-token=...) are supported", code="unsupported_request"
        )
    ixs = []
    if req.memo:
        ixs.append(tokens.memo_ix(req.memo, payer.pubkey()))
    ixs.append(
        tokens.transfer_ix(
            source_owner=payer.pubkey(),
            dest_owner=tokens.pubkey(req.recipient),
            mint=tokens.pubkey(req.spl_token),
            amount=amount,
            references=tuple(tokens.pubkey(r) for r in req.references),
        )
    )
    return ixs


def send_payment(
    chain: WalletChain,
    payer: Keypair,
    req: TransferRequest,
    *,
    amount: int | None = None,
    timeout: float = 60.0,
    poll: float = 0.5,
    on_status: Callable[[str], None] | None = None,
) -> str:
    """Sign and send the transfer ``req`` asks for, wait until it is confirmed and return its
    signature; an expired blockhash is retried once with a new one."""
    from cyxwiz.chain import tokens
    from cyxwiz.chain.interfaces import BlockhashExpired

    note = on_status or (lambda _msg: None)
    value = req.amount if req.amount is not None else amount
    if value is None or value <= 0:
        raise WalletError("the request names no amount; pass one", code="amount_required")
    if req.amount is not None and amount is not None and amount != req.amount:
        raise WalletError(
            "the request fixes the amount; it cannot be changed", code="invalid_amount"
        )
    ixs = build_payment(payer, req, value)
    me = str(payer.pubkey())
    assert req.spl_token is not None
    held = chain.token_balance(tokens.ata(me, req.spl_token))
    if held < value:
        raise InsufficientFunds(
            f"{me} holds {_units(held, tokens.DECIMALS)} of token {req.spl_token}; "
            f"the request asks for {_units(value, tokens.DECIMALS)}"
        )
    if chain.sol_balance(me) < FEE_RESERVE_LAMPORTS:
        raise InsufficientFunds(f"{me} has no SOL for the transaction fee", code="insufficient_sol")
    for attempt in (1, 2):
        note("fetching a recent blockhash")
        blockhash, last_valid = chain.latest_blockhash()
        tx = tokens.sign(ixs, [payer], blockhash)
        note("sending the transaction")
        try:
            signature = chain.send_raw(bytes(tx))
        except BlockhashExpired:
            if attempt == 2:
                raise
            note("the blockhash expired; signing again with a new one")
            continue
        note(f"waiting for confirmation of {signature}")
        if _confirmed(chain, signature, last_valid, timeout=timeout, poll=poll):
            return signature
        if attempt == 2:
            break
        note("the blockhash expired before the transaction landed; signing again")
    raise BlockhashExpired("the transaction did not land before its blockhash expired; try again")


def _confirmed(
    chain: WalletChain, signature: str, last_valid: int, *, timeout: float, poll: float
) -> bool:
    """True once confirmed; False if it can no longer land (blockhash expired)."""
    from cyxwiz.chain.interfaces import ChainError, TransactionRejected

    deadline = time.monotonic() + timeout
    while True:
        status = chain.statuses([signature])[0]
        if status == "failed":
            raise TransactionRejected(f"transaction {signature} failed on chain")
        if status in ("confirmed", "finalized"):
            return True
        if chain.block_height() > last_valid:
            return False
        if time.monotonic() > deadline:
            raise ChainError(
                f"transaction {signature} was sent but not confirmed within {timeout:.0f}s; "
                "check it later before paying again",
                code="confirmation_timeout",
            )
        time.sleep(poll)


# ---------------------------------------------------------------- commands


@app.command("new")
def new(
    outfile: Annotated[
        Path | None,
        typer.Option(
            "--outfile",
            "-o",
            help="Where to write the keypair (default: $CYXWIZ_WALLET or "
            "~/.config/cyxwiz/id.json).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing keypair file (its key is lost).")
    ] = False,
) -> None:
    """Create a keypair file (solana-keygen's JSON format, mode 0600) and print its address."""
    from cyxwiz.chain.tokens import new_keypair, write_keypair

    path = (outfile or default_keypair_path()).expanduser()
    if path.exists() and not force:
        _fail(f"{path} already exists; refusing to overwrite it (pass --force to replace it)")
    kp = new_keypair()
    if path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        write_keypair(tmp, kp)
        os.replace(tmp, path)
    else:
        write_keypair(path, kp)
    typer.echo(f"Wrote a new keypair to {path} (keep it secret; back it up)", err=True)
    typer.echo(str(kp.pubkey()))


@app.command("address")
def address(keypair: KeypairOpt = None) -> None:
    """Print the wallet's address (public key)."""
    typer.echo(str(_load_keypair(keypair).pubkey()))


@app.command("balance")
def balance(
    keypair: KeypairOpt = None,
    url: UrlOpt = DEFAULT_URL,
    rpc_url: RpcOpt = None,
    usdc_mint: Annotated[
        str | None, typer.Option("--usdc-mint", help="USDC mint (default: the marketplace's).")
    ] = None,
    cyx_mint: Annotated[
        str | None, typer.Option("--cyx-mint", help="CYX mint (default: the marketplace's).")
    ] = None,
) -> None:
    """SOL, USDC and CYX held by the wallet."""
    me = str(_load_keypair(keypair).pubkey())
    mints = {k: v for k, v in (("USDC", usdc_mint), ("CYX", cyx_mint)) if v}
    if rpc_url is None or len(mints) < 2:
        info = _chain_info(url)
        if info is None and rpc_url is None:
            _fail(f"cannot read {url}/api/v1/chain; pass --rpc-url (and --usdc-mint/--cyx-mint)")
        for name, mint in ((info or {}).get("mints") or {}).items():
            mints.setdefault(str(name), str(mint))
        rpc_url = rpc_url or (info or {}).get("rpc_url") or url.rstrip("/") + "/chain/rpc"
    assert rpc_url is not None
    chain = RpcWallet(rpc_url)
    try:
        held = balances(chain, me, mints)
    except DomainError as exc:
        _fail(exc.detail)
    finally:
        chain.close()
    typer.echo(f"address  {me}")
    typer.echo(f"SOL      {_units(held.pop('SOL'), SOL_DECIMALS)}")
    for name, amount in held.items():
        typer.echo(f"{name:<8} {_units(amount, 6)}")


@app.command("pay")
def pay(
    request_url: Annotated[str, typer.Argument(metavar="URL", help="A solana: transfer request.")],
    keypair: KeypairOpt = None,
    url: UrlOpt = DEFAULT_URL,
    rpc_url: RpcOpt = None,
    amount: Annotated[
        str | None, typer.Option(help="Amount to send if the request names none (e.g. 12.5).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Pay a Solana Pay transfer request: build, sign and send it, wait for confirmation."""
    from rich.console import Console

    from cyxwiz.chain.solana_pay import parse_url

    try:
        req = parse_url(request_url)
    except DomainError as exc:
        _fail(exc.detail)
    payer = _load_keypair(keypair)
    chosen = _parse_amount(amount) if amount is not None else None
    info = _chain_info(url) if rpc_url is None or req.spl_token else None
    names = {str(v): str(k) for k, v in ((info or {}).get("mints") or {}).items()}
    token = names.get(req.spl_token or "", req.spl_token or "SOL")
    value = req.amount if req.amount is not None else chosen
    shown = _units(value, 6) if value is not None else "?"
    rpc = rpc_url or (info or {}).get("rpc_url") or url.rstrip("/") + "/chain/rpc"
    typer.echo(f"Pay {shown} {token} to {req.recipient}")
    for key in ("label", "message", "memo"):
        if getattr(req, key):
            typer.echo(f"  {key}: {getattr(req, key)}")
    typer.echo(f"  from {payer.pubkey()} via {rpc}")
    if not yes and not typer.confirm("Send?", default=False):
        _fail("not sent", code=1)
    chain = RpcWallet(str(rpc))
    console = Console(stderr=True)
    try:
        with console.status("sending", spinner="dots") as status:
            signature = send_payment(
                chain,
                payer,
                req,
                amount=chosen,
                on_status=lambda msg: status.update(msg),
            )
    except DomainError as exc:
        _fail(exc.detail)
    finally:
        chain.close()
    typer.secho("confirmed", fg="green", err=True)
    typer.echo(signature)


def _parse_amount(text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        _fail(f"amount {text!r} is not a number")
    if not value.is_finite() or value <= 0 or value != value.quantize(Decimal("0.000001")):
        _fail(f"amount {text!r} must be positive with at most 6 decimals")
    return int(value.scaleb(6))


def _sign_siws(kp: Keypair, message: str, url: str) -> str:
    """The base58 signature of a sign-in message, after checking it is one addressed to this
    wallet by the marketplace being talked to (never sign what a server merely hands over)."""
    domain = urlsplit(url).netloc
    lines = message.split("\n")
    if (
        len(lines) < 3
        or lines[0] != f"{domain} wants you to sign in with your Solana account:"
        or lines[1] != str(kp.pubkey())
        or not any(line.startswith("Nonce: ") for line in lines)
    ):
        _fail(
            f"the server sent a message that is not a sign-in for {kp.pubkey()} at {domain}; "
            "refusing to sign it:\n" + message[:500]
        )
    return str(kp.sign_message(message.encode("utf-8")))


@app.command("sign-in")
def sign_in(
    keypair: KeypairOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option(envvar="CYXWIZ_TOKEN", help="Your access token (to link the wallet)."),
    ] = None,
    login: Annotated[
        bool,
        typer.Option("--login", help="Log in with the wallet instead; prints an access token."),
    ] = False,
    label: Annotated[str, typer.Option(help="A name for the linked wallet.")] = "",
) -> None:
    """Link the wallet to your account by Sign-In With Solana (or log in with it)."""
    kp = _load_keypair(keypair)
    me = str(kp.pubkey())
    if login:
        with _http(url) as c:
            ch = _api(c, "POST", "/api/v1/auth/siws/challenge", json={"address": me})
            signature = _sign_siws(kp, ch["message"], url)
            out = _api(
                c,
                "POST",
                "/api/v1/auth/siws/login",
                json={"message": ch["message"], "signature": signature},
            )
        typer.echo(f"Logged in as the account {me} is linked to", err=True)
        typer.echo(out["access_token"])
        return
    if not token:
        _fail("linking needs your access token: pass --token or set CYXWIZ_TOKEN")
    with _http(url, token) as c:
        ch = _api(c, "POST", "/api/v1/wallets/challenge", json={"address": me})
        signature = _sign_siws(kp, ch["message"], url)
        wallet = _api(
            c,
            "POST",
            "/api/v1/wallets",
            json={"message": ch["message"], "signature": signature, "label": label},
        )
    typer.echo(f"Linked {wallet['address']} to your account")
