-- A run's ledger is planned in chunks of readers, in subscriber id order,
-- while the first chunks are already being sent. `planning` is 1 until
-- every reader has a ledger row; `plan_cursor` is the last subscriber id
-- planned, so that planning resumes after a crash exactly where it stopped.
-- Runs planned before this migration were planned whole.
alter table digest_runs add column planning integer not null default 0;
alter table digest_runs add column plan_cursor integer not null default 0;
