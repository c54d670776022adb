-- The answers of recent commits by idempotency key: a client whose answer
-- was lost sends the same commit again and gets the first answer, instead
-- of having it applied twice (or refused as "id_taken"). Kept a day.
CREATE TABLE commit_keys (
  project INTEGER NOT NULL,
  key TEXT NOT NULL,
  result TEXT NOT NULL,
  created_ns INTEGER NOT NULL,
  PRIMARY KEY (project, key)
);
CREATE INDEX commit_keys_age ON commit_keys(created_ns);
