"""Wallets and their ledger: posting credits and debits, the job-posting statements, cached reads.

`from shared import ledger` gives the posting surface (`posting`); the
submodules say who owns what: `posting` the ORM postings and reads,
`job_posting` a ledger job's claim, posting and finish as one PostgreSQL
statement (one job, or a batch), `wallet_cache` the cached balance and first
pages.
"""

from shared.ledger.posting import (
    MAX_AMOUNT,
    InsufficientFunds,
    Posting,
    create_wallet,
    entry_item,
    ledger_sum,
    list_entries,
    plan_random_batch,
    post,
    post_random_entry,
    wallet_for_user,
)

__all__ = [
    "MAX_AMOUNT",
    "InsufficientFunds",
    "Posting",
    "create_wallet",
    "entry_item",
    "ledger_sum",
    "list_entries",
    "plan_random_batch",
    "post",
    "post_random_entry",
    "wallet_for_user",
]
