-- Directory listings read every column of up to 500 children by name. A
-- covering index answers them with one range scan instead of one table
-- lookup per child; nodes_by_name still enforces unique live names.
CREATE INDEX nodes_listing ON nodes(project, parent, name, id, kind, mode, size, mtime_ns, version, seq, target, deleted)
  WHERE deleted = 0;
