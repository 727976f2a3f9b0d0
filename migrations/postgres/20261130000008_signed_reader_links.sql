-- Readers' links are signed (`{id}.{mac}`, see domain::ReaderTokens) with
-- a key kept out of the store, and checked without it. The random tokens
-- of the emails sent before still open their reader's pages: the store
-- keeps only their SHA-256 (`sha256:…`; gazette hashes the rows of before
-- when it starts), and for readers added since, `none:…`, which no token
-- matches.
alter table subscribers rename column unsubscribe_token to legacy_token_hash;
-- The rows whose token is still in clear: none once gazette has started,
-- so the look for them at every start costs nothing.
create index subscribers_token_in_clear on subscribers (id)
    where legacy_token_hash not like 'sha256:%' and legacy_token_hash not like 'none:%';

-- The fingerprint of the key that signs the links: a process with another
-- key is refused instead of mailing links the others cannot open.
create table token_keys (
    name text primary key,
    fingerprint text not null,
    created_at timestamptz not null
);
