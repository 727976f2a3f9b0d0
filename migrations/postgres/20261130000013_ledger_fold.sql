-- The counts of a run whose ledger rows were folded (`[delivery]
-- keep_ledger`): the rows of a finished run are deleted in batches, and
-- each batch adds what it deleted here, in the same transaction, so the
-- run's counts read the same before and after. A run may be part folded:
-- its counts are these plus its rows still in the ledger.
create table run_counts (
    run_id bigint primary key references digest_runs (id),
    sent bigint not null default 0,
    failed bigint not null default 0,
    skipped bigint not null default 0,
    folded_at timestamptz not null
);
