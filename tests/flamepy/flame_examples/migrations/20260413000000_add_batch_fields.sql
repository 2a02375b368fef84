-- From xflops/flame v0.6.0, session_manager/migrations/sqlite/20260413000000_add_batch_fields.sql (Apache License 2.0, Copyright The Flame Authors); unchanged below.
-- Add batch scheduling fields (RFE400-batch-session)
-- batch_size: number of executors per batch for gang scheduling
-- batch_index: executor's index within its batch (0 to batch_size-1)

ALTER TABLE sessions ADD COLUMN batch_size INTEGER NOT NULL DEFAULT 1;

ALTER TABLE executors ADD COLUMN batch_index INTEGER;
