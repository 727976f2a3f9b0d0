-- Confirmation emails wait here until the relay takes them: the web
-- request never waits for the relay, a relay that is down delays the email
-- instead of losing it, and what the relay answers never reaches the page.
-- The link's token is kept in clear only until its email is sent (or given
-- up); only its hash is kept after that. Rows from before this migration
-- were mailed by the request that made them.
alter table confirmations
    add column mail_status text not null default 'sent',
    add column link_token text,
    add column attempts integer not null default 0,
    add column next_attempt_at timestamptz,
    add column lease_until timestamptz,
    add column last_error text;
create index confirmations_mail_due on confirmations (next_attempt_at)
    where mail_status = 'pending';
