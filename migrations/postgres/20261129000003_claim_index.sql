-- Claims take a run's due pending rows in id order. With the old index on
-- (run_id, next_attempt_at) every claim sorted all the pending rows of the
-- run: quadratic in the list size. This one is read in order, and the
-- next_attempt_at condition filters as it goes.
drop index deliveries_due;
create index deliveries_pending on deliveries (run_id, id) where status = 'pending';
