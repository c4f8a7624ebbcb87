"""The embedded chain (LiteSVM + its sqlite history) behaves as a durable single-node cluster."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from cyxwiz.chain import tokens
from cyxwiz.chain.interfaces import BlockhashExpired, TransactionRejected
from cyxwiz.chain.local import VALID_BLOCKS, LocalChain
from cyxwiz.config import ConfigError, Settings
from cyxwiz.money import Currency
from tests.chain.conftest import FakeTime, open_local


def _wallet() -> tuple[Keypair, str]:
    kp = Keypair()
    return kp, str(kp.pubkey())


def _pay(
    chain: LocalChain,
    payer: Keypair,
    to: str,
    amount: int,
    *,
    references: tuple[Pubkey, ...] = (),
    memo: str | None = None,
) -> bytes:
    """A wallet's signed USDC transfer to ``to`` (destination ATA created if missing)."""
    mint = Pubkey.from_string(chain.mint_of(Currency.USDC))
    dest = Pubkey.from_string(to)
    ixs = [
        tokens.create_ata_ix(payer.pubkey(), dest, mint),
        tokens.transfer_ix(
            source_owner=payer.pubkey(),
            dest_owner=dest,
            mint=mint,
            amount=amount,
            references=references,
        ),
    ]
    if memo is not None:
        ixs.append(tokens.memo_ix(memo, payer.pubkey()))
    return bytes(tokens.sign(ixs, [payer], chain.latest_blockhash()[0]))


def test_mint_and_balances(local_chain: LocalChain) -> None:
    _, user = _wallet()
    account = local_chain.token_account_of(user, Currency.USDC)
    assert local_chain.token_balance(account) == 0
    sig = local_chain.mint_to(owner=user, currency=Currency.USDC, amount=2_500_000)
    assert local_chain.token_balance(account) == 2_500_000
    assert local_chain.token_balance(local_chain.token_account_of(user, Currency.CYX)) == 0
    assert local_chain.sol_balance(user) > 0  # the dev faucet tops the wallet up for fees
    record = local_chain.transaction(sig)
    assert record is not None
    assert record.status == "finalized"
    assert record.err is None
    assert record.signers == (local_chain.treasury,)
    assert record.delta_of(account, local_chain.mint_of(Currency.USDC)) == 2_500_000
    assert local_chain.statuses([sig]) == ["finalized"]


def test_treasury_transfer_with_memo(local_chain: LocalChain) -> None:
    _, user = _wallet()
    local_chain.mint_to(owner=local_chain.treasury, currency=Currency.CYX, amount=10_000_000)
    vault = local_chain.vault_of(Currency.CYX)
    before = local_chain.token_balance(vault)
    sent = local_chain.sign_treasury_transfer(
        currency=Currency.CYX, owner=user, amount=4_000_000, memo="payout:42"
    )
    assert local_chain.statuses([sent.signature]) == [None]  # signed, not sent
    assert sent.last_valid_block_height == local_chain.block_height() + VALID_BLOCKS
    assert local_chain.send_raw(sent.raw) == sent.signature
    assert local_chain.token_balance(vault) == before - 4_000_000
    assert local_chain.token_balance(local_chain.token_account_of(user, Currency.CYX)) == 4_000_000
    record = local_chain.transaction(sent.signature)
    assert record is not None
    assert record.memos == ("payout:42",)
    [info] = local_chain.signatures_for(user)
    assert info.signature == sent.signature
    assert info.memo == "payout:42"


def test_reference_lookup(local_chain: LocalChain) -> None:
    payer, who = _wallet()
    local_chain.mint_to(owner=who, currency=Currency.USDC, amount=5_000_000)
    reference = Keypair().pubkey()
    raw = _pay(local_chain, payer, local_chain.treasury, 1_250_000, references=(reference,))
    sig = local_chain.send_raw(raw)
    [info] = local_chain.signatures_for(str(reference))
    assert info.signature == sig
    record = local_chain.transaction(sig)
    assert record is not None
    assert str(reference) in record.account_keys
    usdc = local_chain.mint_of(Currency.USDC)
    assert record.delta_of(local_chain.vault_of(Currency.USDC), usdc) == 1_250_000
    assert record.delta_of(local_chain.token_account_of(who, Currency.USDC), usdc) == -1_250_000
    assert local_chain.signatures_for(str(Keypair().pubkey())) == []


def test_history_pages_newest_first(local_chain: LocalChain) -> None:
    payer, who = _wallet()
    local_chain.mint_to(owner=who, currency=Currency.USDC, amount=5_000_000)
    sigs = [
        local_chain.send_raw(_pay(local_chain, payer, local_chain.treasury, n)) for n in (1, 2, 3)
    ]
    history = [i.signature for i in local_chain.signatures_for(who)]
    assert history[:3] == sigs[::-1]
    assert [i.signature for i in local_chain.signatures_for(who, limit=2)] == sigs[::-1][:2]
    assert [i.signature for i in local_chain.signatures_for(who, before=sigs[2])][:2] == [
        sigs[1],
        sigs[0],
    ]
    assert [i.signature for i in local_chain.signatures_for(who, until=sigs[0])] == sigs[:0:-1]


def test_duplicate_signature_refused(local_chain: LocalChain) -> None:
    sent = local_chain.sign_memo("once")
    local_chain.send_raw(sent.raw)
    slot = local_chain.block_height()
    with pytest.raises(TransactionRejected, match="AlreadyProcessed"):
        local_chain.send_raw(sent.raw)
    assert local_chain.block_height() == slot
    assert [i.signature for i in local_chain.signatures_for(local_chain.treasury, limit=1)] == [
        sent.signature
    ]


def test_failed_transaction_changes_nothing(local_chain: LocalChain) -> None:
    payer, who = _wallet()
    local_chain.mint_to(owner=who, currency=Currency.USDC, amount=1_000_000)
    account = local_chain.token_account_of(who, Currency.USDC)
    slot = local_chain.block_height()
    history = local_chain.signatures_for(who)
    raw = _pay(local_chain, payer, local_chain.treasury, 1_000_001)  # one unit too many
    with pytest.raises(TransactionRejected, match="insufficient funds"):
        local_chain.send_raw(raw)
    assert local_chain.token_balance(account) == 1_000_000
    assert local_chain.block_height() == slot
    assert local_chain.signatures_for(who) == history
    sig = str(Transaction.from_bytes(raw).signatures[0])
    assert local_chain.statuses([sig]) == [None]
    assert local_chain.transaction(sig) is None


def test_refused_transaction_charges_no_fee(local_chain: LocalChain) -> None:
    payer, who = _wallet()
    local_chain.mint_to(owner=who, currency=Currency.USDC, amount=1_000_000)
    sol = local_chain.sol_balance(who)
    with pytest.raises(TransactionRejected):
        local_chain.send_raw(_pay(local_chain, payer, local_chain.treasury, 1_000_001))
    assert local_chain.sol_balance(who) == sol


def test_bad_signature_refused(local_chain: LocalChain) -> None:
    raw = bytearray(local_chain.sign_memo("tampered").raw)
    raw[-1] ^= 0xFF  # change the memo text after signing
    with pytest.raises(TransactionRejected, match="SignatureFailure"):
        local_chain.send_raw(bytes(raw))


def test_restart_keeps_balances_mints_and_history(
    local_settings: Settings, fake_time: FakeTime
) -> None:
    chain = open_local(local_settings, fake_time)
    payer, who = _wallet()
    minted = chain.mint_to(owner=who, currency=Currency.USDC, amount=7_000_000)
    paid = chain.send_raw(_pay(chain, payer, chain.treasury, 2_000_000, memo="order-7"))
    unsent = chain.sign_memo("signed before the restart")
    state = {
        "treasury": chain.treasury,
        "mints": {c: chain.mint_of(c) for c in Currency},
        "height": chain.block_height(),
        "user": chain.token_balance(chain.token_account_of(who, Currency.USDC)),
        "vault": chain.token_balance(chain.vault_of(Currency.USDC)),
        "sol": chain.sol_balance(who),
        "history": chain.signatures_for(who),
        "records": [chain.transaction(minted), chain.transaction(paid)],
    }
    chain.close()

    again = open_local(local_settings, fake_time)
    try:
        assert again.treasury == state["treasury"]
        assert {c: again.mint_of(c) for c in Currency} == state["mints"]
        assert again.block_height() == state["height"]
        assert again.token_balance(again.token_account_of(who, Currency.USDC)) == state["user"]
        assert again.token_balance(again.vault_of(Currency.USDC)) == state["vault"]
        assert again.sol_balance(who) == state["sol"]
        assert again.signatures_for(who) == state["history"]
        assert [again.transaction(minted), again.transaction(paid)] == state["records"]
        with pytest.raises(BlockhashExpired):  # nothing signed before the restart replays
            again.send_raw(unsent.raw)
        # the chain keeps working: tokens still move with the restored mint authority
        again.mint_to(owner=who, currency=Currency.USDC, amount=1)
        assert again.token_balance(again.token_account_of(who, Currency.USDC)) == 5_000_001
    finally:
        again.close()


# LocalChain leaks its lock file and sqlite handle when its constructor fails after taking the
# lock (here: the treasury cannot be unsealed); they are only closed by the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_treasury_is_sealed_with_the_master_key(local_settings: Settings) -> None:
    chain = open_local(local_settings)
    chain.close()
    sealed = (local_settings.resolved_chain_dir / "treasury.json").read_text()
    assert chain.treasury in sealed  # the public key is recorded ...
    secret = base64.b64encode(bytes(chain._treasury)).decode()
    assert secret not in sealed  # ... the secret key is not
    other = Settings(
        data_dir=local_settings.data_dir, master_key=base64.b64encode(os.urandom(32)).decode()
    )
    with pytest.raises(ConfigError, match=r"cannot decrypt|not configured"):
        open_local(other)
    open_local(local_settings).close()  # the lock was released; the right key still opens it


def test_second_process_refused(local_chain: LocalChain, local_settings: Settings) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from cyxwiz.chain.interfaces import ChainUnavailable
        from cyxwiz.chain.local import LocalChain
        try:
            LocalChain(directory=Path(sys.argv[1]), master_keys={"k": bytes(32)})
        except ChainUnavailable as exc:
            print("refused:", exc.detail)
            sys.exit(3)
        sys.exit(0)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(local_settings.resolved_chain_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 3, out.stderr
    assert "/chain/rpc" in out.stdout
    assert local_chain.block_height() > 0  # the owner is unaffected


def test_lock_released_on_close(local_settings: Settings) -> None:
    open_local(local_settings).close()
    open_local(local_settings).close()


def test_blockhash_expiry(
    local_chain: LocalChain, local_settings: Settings, fake_time: FakeTime
) -> None:
    sent = local_chain.sign_memo("too late")
    fake_time.advance(local_settings.chain_blockhash_ttl_seconds + 1)
    fresh, _ = local_chain.latest_blockhash()  # the next blockhash anyone asks for is new
    assert fresh != str(Transaction.from_bytes(sent.raw).message.recent_blockhash)
    with pytest.raises(BlockhashExpired):
        local_chain.send_raw(sent.raw)
    again = local_chain.sign_memo("in time")
    assert local_chain.send_raw(again.raw) == again.signature
