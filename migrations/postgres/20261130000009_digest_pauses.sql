-- Digests paused with `gazette pause`, in the store so that every replica
-- agrees. A paused digest's slots are recorded as missed, not sent.
create table digest_pauses (
    digest text primary key,
    paused_at timestamptz not null
);
