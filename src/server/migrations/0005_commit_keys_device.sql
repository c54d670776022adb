-- Commit keys by device: a device's newest keys stay past the day, so a
-- mount that lost a commit's answer and comes back after days (a laptop
-- asleep) still gets that answer instead of its batch applied twice.
-- Keys are stored as DEVICE/KEY; older rows get their device from that.
ALTER TABLE commit_keys ADD COLUMN device TEXT NOT NULL DEFAULT '';
UPDATE commit_keys SET device = substr(key, 1, instr(key, '/') - 1) WHERE instr(key, '/') > 1;
CREATE INDEX commit_keys_device ON commit_keys(project, device, created_ns);
