-- Every delivery is updated twice, when claimed and when its outcome is
-- recorded, and both updates change its status and lease. The partial
-- indexes on status made each of those updates write new index entries,
-- whose dead versions pile up during a long run. Without an index on a
-- changing column, Postgres can update a row in place on its page (a
-- heap-only tuple). Claims read the run in id order through this index and
-- filter on status as they go; they also take the rows whose lease expired,
-- so that no statement has to look the ledger up by lease.
drop index deliveries_pending;
drop index deliveries_leased;
create index deliveries_run on deliveries (run_id, id);
-- Room on each page for the updated versions of its rows.
alter table deliveries set (fillfactor = 50);
