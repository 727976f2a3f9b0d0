-- Every new subscriber enters the indexes below, and an import of a
-- million readers spends most of its time there (see docs/benchmarks.md).
-- Addresses and token hashes are compared for equality only, never
-- sorted for a reader to see: compared byte by byte ("C") instead of by
-- the database's locale, each index entry costs less.
alter table subscribers alter column email_key type text collate "C";
-- Imported readers have no token of before: null instead of a unique
-- `none:` placeholder, and left out of the index that finds old tokens
-- (a look-up by a token's hash implies a value that is not null, so it
-- still uses this index).
alter table subscribers alter column legacy_token_hash type text collate "C";
alter table subscribers alter column legacy_token_hash drop not null;
alter table subscribers drop constraint subscribers_unsubscribe_token_key;
create unique index subscribers_legacy_token on subscribers (legacy_token_hash)
    where legacy_token_hash is not null;
