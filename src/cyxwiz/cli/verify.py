"""``cyxwiz verify OWNER/NAME@VERSION``: check a model version against its on-chain attestation.

Trust-minimized: the marketplace supplies only the attestation's signature, the manifest and
the files; the memo is read from the chain's own JSON-RPC (``getTransaction``), the manifest is
hashed here and compared with the memo, and every file is hashed here as it downloads.
Exit codes: 0 verified, 1 a mismatch, 2 an error (could not check).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

if TYPE_CHECKING:
    import httpx

MEMO_PROGRAMS = (
    "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr",  # SPL Memo v2 (what the marketplace uses)
    "Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo",  # SPL Memo v1
)
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
CHUNK = 1024 * 1024
VERIFIED, MISMATCH, ERROR = 0, 1, 2


class VerifyError(Exception):
    """Could not check (network, API or RPC error): exit 2."""


def b58decode(text: str) -> bytes:
    num = 0
    for ch in text:
        idx = B58.find(ch)
        if idx < 0:
            raise ValueError(f"invalid base58 character {ch!r}")
        num = num * 58 + idx
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (as the marketplace computes it at publish)."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class OnChain:
    slot: int
    signer: str | None
    memos: list[str]


def parse_transaction(result: dict[str, Any]) -> OnChain:
    """Memos and signer of a ``getTransaction`` result (``json`` or ``jsonParsed`` encoding)."""
    tx = result.get("transaction") or {}
    message = tx.get("message") or {}
    keys = [k["pubkey"] if isinstance(k, dict) else str(k) for k in message.get("accountKeys", [])]
    memos: list[str] = []
    for ix in message.get("instructions", []):
        if "programIdIndex" in ix:
            program = keys[ix["programIdIndex"]] if ix["programIdIndex"] < len(keys) else ""
        else:
            program = str(ix.get("programId", ""))
        if program not in MEMO_PROGRAMS:
            continue
        if isinstance(ix.get("parsed"), str):  # jsonParsed
            memos.append(ix["parsed"])
        elif isinstance(ix.get("data"), str):
            memos.append(b58decode(ix["data"]).decode("utf-8", errors="replace"))
    return OnChain(slot=int(result.get("slot") or 0), signer=keys[0] if keys else None, memos=memos)


def rpc_get_transaction(
    client: httpx.Client, rpc_url: str, signature: str
) -> dict[str, Any] | None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "getTransaction",
        "params": [
            signature,
            {"encoding": "json", "commitment": "confirmed", "maxSupportedTransactionVersion": 0},
        ],
    }
    try:
        r = client.post(rpc_url, json=body)
    except Exception as exc:
        raise VerifyError(f"chain RPC {rpc_url} unreachable: {exc}") from None
    if r.status_code != 200:
        raise VerifyError(f"chain RPC {rpc_url} answered HTTP {r.status_code}")
    doc = r.json()
    if doc.get("error"):
        raise VerifyError(f"chain RPC error: {doc['error'].get('message', doc['error'])}")
    result = doc.get("result")
    return result if isinstance(result, dict) else None


def _api_get(client: httpx.Client, path: str) -> dict[str, Any]:
    try:
        r = client.get(path)
    except Exception as exc:
        raise VerifyError(f"marketplace unreachable: {exc}") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail") or r.text
        except ValueError:
            detail = r.text
        raise VerifyError(f"GET {path}: HTTP {r.status_code}: {detail}")
    out: dict[str, Any] = r.json()
    return out


def verify(
    target: Annotated[str, typer.Argument(help="OWNER/NAME@VERSION ('@latest' if omitted).")],
    url: Annotated[
        str, typer.Option("--url", envvar="CYXWIZ_URL", help="The marketplace's base URL.")
    ] = "http://127.0.0.1:8000",
    rpc_url: Annotated[
        str | None,
        typer.Option(
            "--rpc-url",
            envvar="CYXWIZ_RPC_URL",
            help="Solana JSON-RPC to read the memo from (default: <url>/chain/rpc).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="CYXWIZ_TOKEN", help="Bearer token or API key (paid models' files)."
        ),
    ] = None,
    attester: Annotated[
        str | None,
        typer.Option(
            "--attester", help="Require the memo to be signed by this address (the treasury)."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per HTTP request.")] = 60.0,
) -> None:
    """Verify a model version against its on-chain attestation: the memo's manifest sha256 and
    every file's sha256 (downloaded and hashed here). Exit 0 verified, 1 mismatch, 2 error."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        code = _run(
            console,
            target=target,
            url=url.rstrip("/"),
            rpc_url=rpc_url,
            token=token,
            attester=attester,
            timeout=timeout,
        )
    except VerifyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        code = ERROR
    raise typer.Exit(code)


def _run(
    console: Any,
    *,
    target: str,
    url: str,
    rpc_url: str | None,
    token: str | None,
    attester: str | None,
    timeout: float,
) -> int:
    import httpx

    ref, _, label = target.partition("@")
    owner, _, name = ref.partition("/")
    if not owner or not name or "/" in name:
        raise VerifyError(f"{target!r} is not OWNER/NAME@VERSION")
    label = label or "latest"
    rpc = rpc_url or f"{url}/chain/rpc"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
        base = f"/api/v1/models/{quote(owner)}/{quote(name)}/versions/{quote(label)}"
        ver = _api_get(client, base)
        label = str(ver["version"])
        base = f"/api/v1/models/{quote(owner)}/{quote(name)}/versions/{quote(label)}"
        slug = f"{owner.lower()}/{name}@{label}"
        att = _api_get(client, f"{base}/attestation")
        signature = att.get("signature")
        if att.get("status") not in ("sent", "confirmed") or not signature:
            raise VerifyError(
                f"{slug} is not attested on chain yet (status {att.get('status')}); try again soon"
            )
        console.print(f"[bold]{slug}[/bold]  attestation {signature}")
        with httpx.Client(timeout=timeout) as rpc_client:
            result = rpc_get_transaction(rpc_client, rpc, signature)
        problems: list[str] = []
        if result is None:
            console.print(f"[red]MISSING[/red]  transaction not found on chain ({rpc})")
            return _verdict(console, slug, [f"transaction {signature} is not on chain"])
        if (result.get("meta") or {}).get("err") is not None:
            problems.append(f"transaction {signature} failed on chain")
        onchain = parse_transaction(result)
        found = _find_memo(onchain.memos)
        if found is None:
            return _verdict(console, slug, ["the transaction carries no attestation memo"])
        memo_slug, memo_sha = found
        console.print(
            f"on chain  slot {onchain.slot}, signed by {onchain.signer}\n"
            f"memo      {memo_slug} sha256:{memo_sha}"
        )
        if attester and onchain.signer != attester:
            problems.append(f"the memo is signed by {onchain.signer}, not {attester}")
        if memo_slug != slug:
            problems.append(f"the memo attests {memo_slug}, not {slug}")
        manifest = ver.get("manifest") or {}
        digest = manifest_digest(manifest)
        same = digest == memo_sha
        console.print(
            f"manifest  sha256:{digest}  "
            + ("[green]matches the memo[/green]" if same else "[red]DIFFERS from the memo[/red]")
        )
        if not same:
            problems.append("the manifest served differs from the attested one")
        problems += _check_files(console, client, base, manifest)
        return _verdict(console, slug, problems)


def _find_memo(memos: list[str]) -> tuple[str, str] | None:
    for text in memos:
        parts = text.strip().split(" ")
        if (
            len(parts) == 3
            and parts[0] == "cyxwiz-attest:v1"
            and parts[2].startswith("sha256:")
            and len(parts[2]) == 7 + 64
        ):
            return parts[1], parts[2][7:]
    return None


def _check_files(
    console: Any, client: httpx.Client, base: str, manifest: dict[str, Any]
) -> list[str]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )
    from rich.table import Table

    entries = list(manifest.get("files") or [])
    results: list[tuple[str, str, str | None]] = []
    problems: list[str] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        for entry in entries:
            path = str(entry["path"])
            task = progress.add_task(path, total=int(entry.get("size") or 0) or None)
            h = hashlib.sha256()
            try:
                with client.stream("GET", f"{base}/files/{quote(path)}") as r:
                    if r.status_code != 200:
                        r.read()
                        try:
                            detail = r.json().get("detail") or r.text
                        except ValueError:
                            detail = r.text
                        raise VerifyError(f"download of {path}: HTTP {r.status_code}: {detail}")
                    for chunk in r.iter_bytes(CHUNK):
                        h.update(chunk)
                        progress.advance(task, len(chunk))
            except VerifyError:
                raise
            except Exception as exc:
                raise VerifyError(f"download of {path} failed: {exc}") from None
            results.append((path, str(entry["sha256"]), h.hexdigest()))
    table = Table(show_header=True, header_style="bold", box=None)
    for col in ("file", "attested sha256", "downloaded sha256", ""):
        table.add_column(col)
    for path, expected, actual in results:
        ok = expected == actual
        table.add_row(
            path,
            expected[:16] + "…",
            (actual or "")[:16] + "…",
            "[green]OK[/green]" if ok else "[red]DIFFERS[/red]",
        )
        if not ok:
            problems.append(f"{path} differs (expected {expected}, downloaded {actual})")
    console.print(table)
    return problems


def _verdict(console: Any, slug: str, problems: list[str]) -> int:
    if problems:
        for p in problems:
            console.print(f"[red]✗[/red] {p}")
        console.print(f"[bold red]NOT VERIFIED[/bold red]: {slug}: {problems[0]}")
        return MISMATCH
    console.print(f"[bold green]VERIFIED[/bold green]: {slug} matches its on-chain attestation")
    return VERIFIED
