-- From xflops/flame v0.6.0, session_manager/migrations/sqlite/20260320000000_add_shim.sql (Apache License 2.0, Copyright The Flame Authors); unchanged below.
-- Add 'shim' column back to applications table (RFE379)
-- This re-introduces the shim field to enable application-level shim selection

ALTER TABLE applications ADD COLUMN shim INTEGER NOT NULL DEFAULT 0;
