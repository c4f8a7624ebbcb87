"""SPL Token building blocks shared by the backends, the wallet CLI and Solana Pay."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import spl.token.instructions as ti
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.token.constants import ACCOUNT_LEN, TOKEN_PROGRAM_ID
from spl.token.models import TransferCheckedParams

from cyxwiz.errors import InvalidInput
from cyxwiz.money import Currency

DECIMALS = 6
TOKEN_PROGRAM = str(TOKEN_PROGRAM_ID)
MEMO_PROGRAM = str(MEMO_PROGRAM_ID)
MAX_MEMO_BYTES = 566


def pubkey(value: str, *, what: str = "address") -> Pubkey:
    """A base58 address, or a clear 422."""
    try:
        return Pubkey.from_string(value)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{what} {value!r} is not a Solana address", code="invalid_address"
        ) from None


def ata(owner: str | Pubkey, mint: str | Pubkey) -> str:
    """The associated token account of ``owner`` for ``mint``."""
    o = owner if isinstance(owner, Pubkey) else pubkey(owner)
    m = mint if isinstance(mint, Pubkey) else pubkey(mint)
    return str(ti.get_associated_token_address(o, m))


@dataclass(frozen=True)
class TokenAccountState:
    mint: str
    owner: str
    amount: int


def parse_token_account(owner_program: str, data: bytes) -> TokenAccountState | None:
    """The mint, owner and amount of an SPL token account's data (None if it is not one)."""
    if owner_program != TOKEN_PROGRAM or len(data) != ACCOUNT_LEN:
        return None
    return TokenAccountState(
        mint=str(Pubkey.from_bytes(data[0:32])),
        owner=str(Pubkey.from_bytes(data[32:64])),
        amount=int.from_bytes(data[64:72], "little"),
    )


def transfer_ix(
    *,
    source_owner: Pubkey,
    dest_owner: Pubkey,
    mint: Pubkey,
    amount: int,
    references: tuple[Pubkey, ...] = (),
    source: Pubkey | None = None,
    dest: Pubkey | None = None,
) -> Instruction:
    """transferChecked between the owners' associated token accounts; Solana Pay references are
    appended as read-only, non-signer keys so the transfer can be found by reference."""
    ix = ti.transfer_checked(
        TransferCheckedParams(
            program_id=TOKEN_PROGRAM_ID,
            source=source or ti.get_associated_token_address(source_owner, mint),
            mint=mint,
            dest=dest or ti.get_associated_token_address(dest_owner, mint),
            owner=source_owner,
            amount=amount,
            decimals=DECIMALS,
        )
    )
    extra = [AccountMeta(r, is_signer=False, is_writable=False) for r in references]
    return Instruction(ix.program_id, ix.data, [*ix.accounts, *extra])


def create_ata_ix(payer: Pubkey, owner: Pubkey, mint: Pubkey) -> Instruction:
    return ti.create_idempotent_associated_token_account(payer, owner, mint)


def memo_ix(text: str, signer: Pubkey) -> Instruction:
    data = text.encode()
    if len(data) > MAX_MEMO_BYTES:
        raise InvalidInput(f"memo longer than {MAX_MEMO_BYTES} bytes", code="memo_too_long")
    return Instruction(
        MEMO_PROGRAM_ID, data, [AccountMeta(signer, is_signer=True, is_writable=False)]
    )


def sign(ixs: list[Instruction], signers: list[Keypair], blockhash: str) -> Transaction:
    """A legacy transaction paid by the first signer."""
    bh = Hash.from_string(blockhash)
    msg = Message.new_with_blockhash(ixs, signers[0].pubkey(), bh)
    return Transaction(signers, msg, bh)


class MintAddresses:
    """Addresses derived from the treasury and the two mints (every backend has the same)."""

    _mints: dict[Currency, str]

    @property
    def treasury(self) -> str:
        raise NotImplementedError

    def mint_of(self, currency: Currency) -> str:
        return self._mints[currency]

    def vault_of(self, currency: Currency) -> str:
        return ata(self.treasury, self._mints[currency])

    def token_account_of(self, owner: str, currency: Currency) -> str:
        return ata(owner, self._mints[currency])


# ---------------------------------------------------------------- keypair files


def new_keypair() -> Keypair:
    return Keypair.from_seed(secrets.token_bytes(32))


def write_keypair(path: Path, kp: Keypair) -> None:
    """solana-keygen's format (a JSON array of the 64 secret bytes), mode 0600, never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(list(bytes(kp)), fh)


def read_keypair(path: Path) -> Keypair:
    try:
        raw = json.loads(path.read_text())
        return Keypair.from_bytes(bytes(raw))
    except FileNotFoundError:
        raise InvalidInput(f"no keypair file at {path}", code="keypair_not_found") from None
    except (ValueError, TypeError):
        raise InvalidInput(f"{path} is not a Solana keypair file", code="invalid_keypair") from None


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
