-- Tombstones at or below a project's purged_seq are gone: /changes since
-- an older seq cannot be answered (410) and the client reloads /snapshot.
ALTER TABLE projects ADD COLUMN purged_seq INTEGER NOT NULL DEFAULT 0;
