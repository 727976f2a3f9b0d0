-- The counts of a run whose ledger rows were folded (`[delivery]
-- keep_ledger`): the rows of a finished run are deleted in batches, and
-- each batch adds what it deleted here, in the same transaction, so the
-- run's counts read the same before and after. A run may be part folded:
-- its counts are these plus its rows still in the ledger.
create table run_counts (
    run_id integer primary key references digest_runs (id),
    sent integer not null default 0,
    failed integer not null default 0,
    skipped integer not null default 0,
    folded_at integer not null
);
-- Removing a subscriber cascades to their ledger rows here (the ledger
-- kept its foreign keys on SQLite), and SQLite finds a child's rows by
-- scanning its table unless an index leads with the child key.
create index deliveries_subscriber on deliveries (subscriber_id);
