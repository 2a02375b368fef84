-- From xflops/flame v0.6.0, session_manager/migrations/sqlite/20251005120000_version.sql (Apache License 2.0, Copyright The Flame Authors); unchanged below.
ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

ALTER TABLE tasks ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

ALTER TABLE applications ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
