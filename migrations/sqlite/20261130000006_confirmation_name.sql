-- The name typed with a subscribe request waits with its confirmation and
-- reaches the subscriber only when that link is followed: anyone can type
-- an address, only its owner can confirm it.
alter table confirmations add column name text;
