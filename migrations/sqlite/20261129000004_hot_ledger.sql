-- The same indexes as on Postgres (where dropping the partial indexes on
-- status lets the claim and outcome updates rewrite a row in place): claims
-- read the run in id order through this index, filter on status as they
-- go, and also take the rows whose lease expired.
drop index deliveries_pending;
drop index deliveries_leased;
create index deliveries_run on deliveries (run_id, id);
