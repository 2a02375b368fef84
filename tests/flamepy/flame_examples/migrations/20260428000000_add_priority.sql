-- From xflops/flame v0.6.0, session_manager/migrations/sqlite/20260428000000_add_priority.sql (Apache License 2.0, Copyright The Flame Authors); unchanged below.
-- Add priority field to sessions table (RFE413-priority-scheduling)
-- priority: session priority (higher value = higher priority, default 0 = lowest)

ALTER TABLE sessions ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
