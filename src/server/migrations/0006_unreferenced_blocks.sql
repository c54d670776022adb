-- Blocks no version names (uploads whose commit has not come, or never
-- will): the collector finds those past their grace period through this
-- index, without reading the whole table.
CREATE INDEX blocks_unreferenced ON blocks(created_ns) WHERE refs = 0;
