-- Initial schema. Node ids are chosen by clients (63 random bits); the
-- root of every project is id 1.
CREATE TABLE projects (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  seq INTEGER NOT NULL DEFAULT 0,
  created_ns INTEGER NOT NULL
);

CREATE TABLE nodes (
  project INTEGER NOT NULL REFERENCES projects(id),
  id INTEGER NOT NULL,
  parent INTEGER NOT NULL,
  name TEXT NOT NULL,
  kind INTEGER NOT NULL,
  mode INTEGER NOT NULL,
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  version INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0,
  target TEXT,
  PRIMARY KEY (project, id)
) WITHOUT ROWID;
-- Live names are unique in a directory; tombstones keep their old name.
CREATE UNIQUE INDEX nodes_by_name ON nodes(project, parent, name) WHERE deleted = 0;
CREATE INDEX nodes_by_seq ON nodes(project, seq);

-- One manifest per file version (binary, see core/manifest_codec.h).
CREATE TABLE versions (
  project INTEGER NOT NULL,
  node INTEGER NOT NULL,
  version INTEGER NOT NULL,
  size INTEGER NOT NULL,
  manifest BLOB NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY (project, node, version)
) WITHOUT ROWID;

CREATE TABLE blocks (
  project INTEGER NOT NULL,
  hash BLOB NOT NULL,
  pack INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  stored_length INTEGER NOT NULL,
  raw_length INTEGER NOT NULL,
  codec INTEGER NOT NULL,
  refs INTEGER NOT NULL DEFAULT 0,
  created_ns INTEGER NOT NULL,
  PRIMARY KEY (project, hash)
) WITHOUT ROWID;

CREATE TABLE devices (
  project INTEGER NOT NULL,
  name TEXT NOT NULL,
  checkpoint INTEGER NOT NULL DEFAULT 0,
  last_seen_ns INTEGER NOT NULL DEFAULT 0,
  retired INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (project, name)
) WITHOUT ROWID;

CREATE TABLE tokens (
  hash BLOB PRIMARY KEY,
  project INTEGER NOT NULL,
  device TEXT NOT NULL,
  read_only INTEGER NOT NULL,
  created_ns INTEGER NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tokens_by_device ON tokens(project, device);
