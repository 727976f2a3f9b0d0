-- Double opt-in: one row per confirmation email. Only a hash of the token
-- is stored; the row is single-use (used_at) and expires.
create table confirmations (
    token_hash text primary key,
    subscriber_id integer not null references subscribers (id) on delete cascade,
    digests text not null,
    created_at integer not null,
    expires_at integer not null,
    used_at integer
);
create index confirmations_subscriber on confirmations (subscriber_id, created_at);
