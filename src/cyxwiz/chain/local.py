"""The embedded Solana chain: solders' LiteSVM in-process, its state persisted in the data dir.

LiteSVM executes real Solana programs (SPL Token, Associated Token Account, Memo) but keeps its
state in memory. This backend makes it a durable single-node cluster:

* every account a landed transaction touched is written to ``chain.sqlite`` in the same step
  as the transaction record (signature, slot, raw bytes, token balance deltas, memos), so a
  restart restores every balance and mint with ``set_account``;
* signatures are unique across restarts (LiteSVM's own history is in memory only);
* blockhashes expire after ``blockhash_ttl`` seconds, as a cluster's do after ~150 slots;
* one process owns the chain (an exclusive ``flock``); others get ``ChainUnavailable`` and talk to
  the owner over its JSON-RPC endpoint instead.

Transactions that fail execution are refused as a cluster's preflight would refuse them; they
change nothing and leave no record.
"""

from __future__ import annotations

import fcntl
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from solders.account import Account
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from spl.token.constants import MINT_LEN, TOKEN_PROGRAM_ID
from spl.token.instructions import initialize_mint, mint_to
from spl.token.models import InitializeMintParams, MintToParams

from cyxwiz.chain import tokens, treasury
from cyxwiz.chain.interfaces import (
    BlockhashExpired,
    ChainUnavailable,
    Sent,
    SignatureInfo,
    TokenDelta,
    TransactionRejected,
    TxRecord,
)
from cyxwiz.errors import InvalidInput
from cyxwiz.money import Currency

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    pubkey TEXT PRIMARY KEY, lamports INTEGER NOT NULL, data BLOB NOT NULL, owner TEXT NOT NULL,
    executable INTEGER NOT NULL, rent_epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS txs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, signature TEXT NOT NULL UNIQUE, slot INTEGER NOT NULL,
    block_time INTEGER NOT NULL, raw BLOB NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS addr_sigs (address TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (address, seq));
"""
FIRST_SLOT = 1_000
VALID_BLOCKS = 150  # a blockhash is valid for this many slots after the latest one
TREASURY_LAMPORTS = 10**13  # 10,000 SOL on the dev chain for fees and rent
WALLET_FEE_LAMPORTS = 10**9  # what the dev faucet tops a wallet up to, for fees
SKIP_OWNERS = {
    "NativeLoader1111111111111111111111111111111",
    "Sysvar1111111111111111111111111111111111111",
}


class LocalChain(tokens.MintAddresses):
    """A durable single-node Solana cluster on LiteSVM (see module docstring)."""

    backend = "local"

    def __init__(
        self,
        *,
        directory: Path,
        master_keys: Mapping[str, bytes],
        blockhash_ttl: float = 60.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lockfile: IO[str] | None = open(directory / "chain.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            self._lockfile = None
            raise ChainUnavailable(
                f"the local chain in {directory} is open in another process (a running "
                "`cyxwiz serve`?); use its JSON-RPC endpoint (/chain/rpc) instead"
            ) from None
        try:
            self._open(directory, master_keys, blockhash_ttl, now)
        except BaseException:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)
            self._lockfile.close()
            self._lockfile = None
            raise

    def _open(
        self,
        directory: Path,
        master_keys: Mapping[str, bytes],
        blockhash_ttl: float,
        now: Callable[[], float],
    ) -> None:
        self._lock = threading.RLock()
        self._now = now
        self._ttl = blockhash_ttl
        self._db = sqlite3.connect(
            directory / "chain.sqlite", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._svm = LiteSVM()
        for row in self._db.execute(
            "SELECT pubkey, lamports, data, owner, executable, rent_epoch FROM accounts"
        ):
            self._svm.set_account(
                Pubkey.from_string(row[0]),
                Account(row[1], bytes(row[2]), Pubkey.from_string(row[3]), bool(row[4]), row[5]),
            )
        self._blockhash_at = self._now()
        try:
            self._treasury, _ = treasury.load_or_create(directory / "treasury.json", master_keys)
        except BaseException:
            self._db.close()
            raise
        meta: dict[str, str] = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self._slot = int(meta.get("slot", FIRST_SLOT))
        if self._slot > FIRST_SLOT:
            # A fresh LiteSVM starts from the same genesis blockhash: move past it so nothing
            # signed before the restart can be replayed (signatures are also checked).
            self._svm.expire_blockhash()
        if "usdc_mint" not in meta:
            meta.update(self._bootstrap())
        self._mints: dict[Currency, str] = {
            Currency.USDC: str(meta["usdc_mint"]),
            Currency.CYX: str(meta["cyx_mint"]),
        }

    # ------------------------------------------------------------ setup

    def _bootstrap(self) -> dict[str, str]:
        t = self._treasury.pubkey()
        self._svm.airdrop(t, TREASURY_LAMPORTS)
        self._persist_accounts([str(t)])
        out: dict[str, str] = {}
        rent = self._svm.minimum_balance_for_rent_exemption(MINT_LEN)
        for cur in Currency:
            mint = Keypair()
            ixs = [
                create_account(
                    CreateAccountParams(
                        from_pubkey=t,
                        to_pubkey=mint.pubkey(),
                        lamports=rent,
                        space=MINT_LEN,
                        owner=TOKEN_PROGRAM_ID,
                    )
                ),
                initialize_mint(
                    InitializeMintParams(
                        decimals=tokens.DECIMALS,
                        program_id=TOKEN_PROGRAM_ID,
                        mint=mint.pubkey(),
                        mint_authority=t,
                        freeze_authority=None,
                    )
                ),
                tokens.create_ata_ix(t, t, mint.pubkey()),
            ]
            self._submit(tokens.sign(ixs, [self._treasury, mint], self._blockhash()))
            out[f"{cur.value.lower()}_mint"] = str(mint.pubkey())
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, v) for k, v in out.items()] + [("treasury", str(t))],
            )
        return out

    # ------------------------------------------------------------ reads

    @property
    def treasury(self) -> str:
        return str(self._treasury.pubkey())

    def account(self, address: str) -> Account | None:
        with self._lock:
            return self._svm.get_account(tokens.pubkey(address))

    def token_balance(self, token_account: str) -> int:
        acc = self.account(token_account)
        if acc is None:
            return 0
        state = tokens.parse_token_account(str(acc.owner), bytes(acc.data))
        return state.amount if state else 0

    def sol_balance(self, address: str) -> int:
        with self._lock:
            return int(self._svm.get_balance(tokens.pubkey(address)) or 0)

    def block_height(self) -> int:
        return self._slot

    def rent_exempt(self, size: int) -> int:
        return int(self._svm.minimum_balance_for_rent_exemption(size))

    def _blockhash(self) -> str:
        if self._now() - self._blockhash_at >= self._ttl:
            # Time passed as on a cluster: the blockhash ages out and the block height moves past
            # every last-valid height handed out with it, so callers can tell "can never land".
            self._svm.expire_blockhash()
            self._blockhash_at = self._now()
            self._slot += VALID_BLOCKS + 1
            with self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('slot', ?)",
                    (str(self._slot),),
                )
        return str(self._svm.latest_blockhash())

    def latest_blockhash(self) -> tuple[str, int]:
        with self._lock:
            return self._blockhash(), self._slot + VALID_BLOCKS

    def statuses(self, signatures: list[str]) -> list[str | None]:
        if not signatures:
            return []
        marks = ",".join("?" * len(signatures))
        with self._lock:
            found = {
                r[0]
                for r in self._db.execute(
                    f"SELECT signature FROM txs WHERE signature IN ({marks})",  # noqa: S608
                    signatures,
                )
            }
        return ["finalized" if s in found else None for s in signatures]

    def signatures_for(
        self,
        address: str,
        *,
        limit: int = 1000,
        until: str | None = None,
        before: str | None = None,
    ) -> list[SignatureInfo]:
        sql = (
            "SELECT t.signature, t.slot, t.block_time, t.record FROM addr_sigs a "
            "JOIN txs t ON t.seq = a.seq WHERE a.address = ?"
        )
        args: list[Any] = [address]
        with self._lock:
            if before is not None:
                row = self._db.execute(
                    "SELECT seq FROM txs WHERE signature = ?", (before,)
                ).fetchone()
                if row is None:
                    return []
                sql += " AND a.seq < ?"
                args.append(row[0])
            rows = self._db.execute(sql + " ORDER BY a.seq DESC LIMIT ?", [*args, limit]).fetchall()
        out = []
        for sig, slot, block_time, record in rows:
            if sig == until:
                break
            memos = json.loads(record).get("memos") or []
            out.append(
                SignatureInfo(
                    signature=sig,
                    slot=slot,
                    err=None,
                    status="finalized",
                    memo="; ".join(memos) or None,
                    block_time=block_time,
                )
            )
        return out

    def transaction(self, signature: str) -> TxRecord | None:
        found = self.raw_transaction(signature)
        return found[1] if found else None

    def raw_transaction(self, signature: str) -> tuple[bytes, TxRecord, dict[str, Any]] | None:
        """(raw bytes, record, the stored details incl. pre/post lamports) of a landed tx."""
        with self._lock:
            row = self._db.execute(
                "SELECT raw, slot, block_time, record FROM txs WHERE signature = ?", (signature,)
            ).fetchone()
        if row is None:
            return None
        doc = json.loads(row[3])
        record = TxRecord(
            signature=signature,
            slot=row[1],
            block_time=row[2],
            err=None,
            status="finalized",
            account_keys=tuple(doc["account_keys"]),
            token_deltas=tuple(TokenDelta(**d) for d in doc["token_deltas"]),
            memos=tuple(doc["memos"]),
            signers=tuple(doc["signers"]),
        )
        return bytes(row[0]), record, doc

    # ------------------------------------------------------------ writes

    def send_raw(self, raw: bytes) -> str:
        try:
            tx = VersionedTransaction.from_bytes(raw)
        except ValueError:
            try:
                tx = Transaction.from_bytes(raw)  # type: ignore[assignment]
            except ValueError:
                raise InvalidInput(
                    "not a serialized Solana transaction", code="invalid_transaction"
                ) from None
        return self._submit(tx).signature

    def _submit(self, tx: Transaction | VersionedTransaction) -> TxRecord:
        with self._lock:
            sig = str(tx.signatures[0])
            if self._db.execute("SELECT 1 FROM txs WHERE signature = ?", (sig,)).fetchone():
                raise TransactionRejected("AlreadyProcessed: this transaction has already landed")
            msg = tx.message
            keys = [str(k) for k in msg.account_keys]
            self._blockhash()  # a blockhash past its lifetime is refused, as on a cluster
            before = {k: self._svm.get_account(Pubkey.from_string(k)) for k in keys}
            pre = {k: self._snapshot(k) for k in keys}
            res = self._svm.send_transaction(tx)
            if isinstance(res, FailedTransactionMetadata):
                # Preflight semantics: a refused transaction changes nothing (LiteSVM would
                # still have charged its fee in memory).
                for k, acc in before.items():
                    if acc is not None:
                        self._svm.set_account(Pubkey.from_string(k), acc)
                err = str(res.err())
                if "BlockhashNotFound" in err:
                    raise BlockhashExpired(
                        "the transaction's blockhash has expired; fetch a new one and sign again"
                    )
                logs = [line for line in res.meta().logs() if "failed" in line or "Error" in line]
                raise TransactionRejected(f"{err}: {'; '.join(logs)[:500]}")
            post = {k: self._snapshot(k) for k in keys}
            self._slot += 1
            header = msg.header
            memos = []
            for ix in msg.instructions:
                if keys[ix.program_id_index] == tokens.MEMO_PROGRAM:
                    memos.append(bytes(ix.data).decode("utf-8", errors="replace"))
            deltas: list[dict[str, Any]] = []
            for k in keys:
                a, b = pre[k][1], post[k][1]
                if a is None and b is None:
                    continue
                ref = b or a
                assert ref is not None
                deltas.append(
                    {
                        "account": k,
                        "mint": ref.mint,
                        "owner": ref.owner,
                        "pre": a.amount if a else 0,
                        "post": b.amount if b else 0,
                    }
                )
            signers = keys[: header.num_required_signatures]
            doc: dict[str, Any] = {
                "account_keys": keys,
                "signers": signers,
                "writable": _writable(header, len(keys)),
                "token_deltas": deltas,
                "memos": memos,
                "pre_lamports": [pre[k][0] for k in keys],
                "post_lamports": [post[k][0] for k in keys],
                "fee": res.fee(),
                "logs": list(res.logs()),
                "compute_units": res.compute_units_consumed(),
            }
            block_time = int(self._now())
            with self._db:
                cur = self._db.execute(
                    "INSERT INTO txs (signature, slot, block_time, raw, record) VALUES (?, ?, ?, ?, ?)",
                    (sig, self._slot, block_time, bytes(tx), json.dumps(doc)),
                )
                seq = cur.lastrowid
                self._db.executemany(
                    "INSERT OR IGNORE INTO addr_sigs (address, seq) VALUES (?, ?)",
                    [(k, seq) for k in dict.fromkeys(keys)],
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('slot', ?)",
                    (str(self._slot),),
                )
                self._persist_accounts(keys, in_txn=True)
            return TxRecord(
                signature=sig,
                slot=self._slot,
                block_time=block_time,
                err=None,
                status="finalized",
                account_keys=tuple(keys),
                token_deltas=tuple(TokenDelta(**d) for d in deltas),
                memos=tuple(memos),
                signers=tuple(signers),
            )

    def _snapshot(self, key: str) -> tuple[int, tokens.TokenAccountState | None]:
        acc = self._svm.get_account(Pubkey.from_string(key))
        if acc is None:
            return 0, None
        return acc.lamports, tokens.parse_token_account(str(acc.owner), bytes(acc.data))

    def _persist_accounts(self, keys: list[str], *, in_txn: bool = False) -> None:
        rows, gone = [], []
        for k in dict.fromkeys(keys):
            acc = self._svm.get_account(Pubkey.from_string(k))
            if acc is None or acc.lamports == 0:
                gone.append((k,))
                continue
            if acc.executable or str(acc.owner) in SKIP_OWNERS:
                continue
            rows.append(
                (
                    k,
                    acc.lamports,
                    bytes(acc.data),
                    str(acc.owner),
                    int(acc.executable),
                    acc.rent_epoch,
                )
            )

        def write() -> None:
            self._db.executemany(
                "INSERT OR REPLACE INTO accounts (pubkey, lamports, data, owner, executable, rent_epoch) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.executemany("DELETE FROM accounts WHERE pubkey = ?", gone)

        if in_txn:
            write()
        else:
            with self._db:
                write()

    def sign_treasury_transfer(
        self, *, currency: Currency, owner: str, amount: int, memo: str
    ) -> Sent:
        t = self._treasury.pubkey()
        mint = tokens.pubkey(self._mints[currency])
        dest = tokens.pubkey(owner, what="wallet")
        ixs = [
            tokens.create_ata_ix(t, dest, mint),
            tokens.transfer_ix(source_owner=t, dest_owner=dest, mint=mint, amount=amount),
            tokens.memo_ix(memo, t),
        ]
        bh, valid = self.latest_blockhash()
        tx = tokens.sign(ixs, [self._treasury], bh)
        return Sent(signature=str(tx.signatures[0]), last_valid_block_height=valid, raw=bytes(tx))

    def sign_memo(self, text: str) -> Sent:
        bh, valid = self.latest_blockhash()
        tx = tokens.sign([tokens.memo_ix(text, self._treasury.pubkey())], [self._treasury], bh)
        return Sent(signature=str(tx.signatures[0]), last_valid_block_height=valid, raw=bytes(tx))

    def mint_to(self, *, owner: str, currency: Currency, amount: int) -> str:
        if amount <= 0:
            raise InvalidInput("amount must be positive", code="invalid_amount")
        t = self._treasury.pubkey()
        mint = tokens.pubkey(self._mints[currency])
        dest = tokens.pubkey(owner, what="wallet")
        with self._lock:
            if self.sol_balance(owner) < WALLET_FEE_LAMPORTS // 10:
                self.airdrop(owner, WALLET_FEE_LAMPORTS)
            ixs = [
                tokens.create_ata_ix(t, dest, mint),
                mint_to(
                    MintToParams(
                        program_id=TOKEN_PROGRAM_ID,
                        mint=mint,
                        dest=Pubkey.from_string(tokens.ata(dest, mint)),
                        mint_authority=t,
                        amount=amount,
                    )
                ),
                # unique per call: two equal mints in one blockhash are two transactions
                tokens.memo_ix(f"cyxwiz:faucet:{secrets.token_hex(8)}", t),
            ]
            return self._submit(tokens.sign(ixs, [self._treasury], self._blockhash())).signature

    def airdrop(self, address: str, lamports: int) -> None:
        with self._lock:
            res = self._svm.airdrop(tokens.pubkey(address), lamports)
            if isinstance(res, FailedTransactionMetadata) and "AlreadyProcessed" in str(res.err()):
                # the same airdrop twice in one blockhash is the same transaction: new blockhash
                self._svm.expire_blockhash()
                self._blockhash_at = self._now()
                res = self._svm.airdrop(tokens.pubkey(address), lamports)
            if isinstance(res, FailedTransactionMetadata):
                raise TransactionRejected(f"airdrop failed: {res.err()}")
            self._persist_accounts([address])

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lockfile is not None:
                fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)
                self._lockfile.close()
                self._lockfile = None


def _writable(header: Any, n: int) -> list[bool]:
    """Which static account keys a message marks writable (Solana's header layout)."""
    signed = header.num_required_signatures
    out = []
    for i in range(n):
        if i < signed:
            out.append(i < signed - header.num_readonly_signed_accounts)
        else:
            out.append(i < n - header.num_readonly_unsigned_accounts)
    return out


class LocalChainSnapshot(tokens.MintAddresses):
    """Read-only view of a local chain's persisted state, usable while another process (a
    running ``cyxwiz serve``) owns the chain — for reconciliation and inspection."""

    backend = "local"

    def __init__(self, directory: Path) -> None:
        path = directory / "chain.sqlite"
        if not path.exists():
            raise ChainUnavailable(f"no local chain in {directory} yet")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self._treasury_address = str(meta["treasury"])
        self._mints = {Currency.USDC: str(meta["usdc_mint"]), Currency.CYX: str(meta["cyx_mint"])}

    @property
    def treasury(self) -> str:
        return self._treasury_address

    def token_balance(self, token_account: str) -> int:
        row = self._db.execute(
            "SELECT owner, data FROM accounts WHERE pubkey = ?", (token_account,)
        ).fetchone()
        if row is None:
            return 0
        state = tokens.parse_token_account(row[0], bytes(row[1]))
        return state.amount if state else 0

    def close(self) -> None:
        self._db.close()
