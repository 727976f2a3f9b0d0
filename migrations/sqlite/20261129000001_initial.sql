-- Timestamps are integer milliseconds since the Unix epoch (UTC).
-- Articles are upserted by url; their tags live in their own table so that
-- the same tag filter works on both backends.
create table articles (
    id integer primary key autoincrement,
    url text not null unique,
    title text not null,
    summary text,
    body text,
    author text,
    published_at integer not null,
    created_at integer not null,
    updated_at integer not null
);
create index articles_published_at on articles (published_at desc);

create table article_tags (
    article_id integer not null references articles (id) on delete cascade,
    tag text not null,
    primary key (article_id, tag)
);
create index article_tags_tag on article_tags (tag);

-- email_key is the lowercased address: one subscriber per address whatever its case.
create table subscribers (
    id integer primary key autoincrement,
    email text not null,
    email_key text not null unique,
    name text,
    status text not null check (status in ('pending', 'confirmed', 'unsubscribed', 'bounced')),
    unsubscribe_token text not null unique,
    created_at integer not null,
    updated_at integer not null
);

create table subscriptions (
    subscriber_id integer not null references subscribers (id) on delete cascade,
    digest text not null,
    created_at integer not null,
    primary key (subscriber_id, digest)
);
create index subscriptions_digest on subscriptions (digest, subscriber_id);

-- One row per (digest, slot): planning the same slot twice creates nothing.
create table digest_runs (
    id integer primary key autoincrement,
    digest text not null,
    slot integer not null,
    status text not null check (status in ('sending', 'finished', 'skipped', 'missed')),
    window_start integer not null,
    cutoff integer not null,
    created_at integer not null,
    finished_at integer,
    unique (digest, slot)
);

-- A snapshot of each article as it was when the run was planned, so that a
-- retry or a preview of the run renders the same email.
create table run_articles (
    run_id integer not null references digest_runs (id) on delete cascade,
    position integer not null,
    article_id integer not null,
    url text not null,
    title text not null,
    summary text,
    body text,
    author text,
    tags text not null,
    published_at integer not null,
    primary key (run_id, position)
);

-- The delivery ledger: one row per subscriber of a run.
create table deliveries (
    id integer primary key autoincrement,
    run_id integer not null references digest_runs (id) on delete cascade,
    subscriber_id integer not null references subscribers (id) on delete cascade,
    status text not null check (status in ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts integer not null default 0,
    next_attempt_at integer not null,
    lease_until integer,
    last_error text,
    sent_at integer,
    unique (run_id, subscriber_id)
);
create index deliveries_due on deliveries (run_id, next_attempt_at) where status = 'pending';
create index deliveries_leased on deliveries (lease_until) where status = 'sending';
