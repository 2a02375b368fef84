-- From xflops/flame v0.6.0, session_manager/migrations/sqlite/20260112000000_add_url.sql (Apache License 2.0, Copyright The Flame Authors); unchanged below.
-- Add url field to applications table for RFE284
ALTER TABLE applications ADD COLUMN url TEXT;
