-- Bounces and complaints, one row per report that counted: who, for which
-- run (null for a confirmation email), what kind, from where, and why.
-- A report repeated for the same delivery and kind counts once (the unique
-- index); the rows stay when the ledger's rows of old runs are folded, so
-- a run's bounced count is read from here.
create table bounces (
    id integer primary key,
    subscriber_id integer not null references subscribers (id) on delete cascade,
    run_id integer,
    kind text not null check (kind in ('hard', 'soft', 'complaint')),
    source text not null check (source in ('dsn', 'arf', 'webhook', 'smtp')),
    reason text not null,
    received_at integer not null
);
create unique index bounces_once on bounces (subscriber_id, coalesce(run_id, 0), kind);
create index bounces_run on bounces (run_id, kind);

-- A reader's bounces since they were last confirmed: hard ones, and the
-- digests in a row that soft-bounced (the latest of them in
-- soft_bounce_run), which a digest delivered without a bounce resets.
alter table subscribers add column hard_bounces integer not null default 0;
alter table subscribers add column soft_bounces integer not null default 0;
alter table subscribers add column soft_bounce_run integer;

-- Secrets every replica shares, made on first use (the key of the return
-- path's tokens).
create table secrets (
    name text primary key,
    value text not null,
    created_at integer not null
);
