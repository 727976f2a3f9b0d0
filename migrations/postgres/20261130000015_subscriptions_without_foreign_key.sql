-- An import adds a subscription for every row of its file, and Postgres
-- checks a foreign key row by row, locking the subscriber each time: at a
-- million rows the checks took as long as the inserts themselves (see
-- docs/benchmarks.md). Nothing needs it: every statement that adds a
-- subscription runs in a transaction that has already inserted or updated
-- its subscriber (so a removal waits for it to commit), removing a
-- subscriber deletes their subscriptions after the subscriber, and every
-- read of the subscriptions joins the subscribers. SQLite keeps its key.
alter table subscriptions drop constraint subscriptions_subscriber_id_fkey;
