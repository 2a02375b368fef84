-- From xflops/flame v0.6.0, session_manager/migrations/sqlite/20260426000000_add_installer.sql (Apache License 2.0, Copyright The Flame Authors); unchanged below.
-- Add installer field to applications table for RFE420
ALTER TABLE applications ADD COLUMN installer TEXT;
