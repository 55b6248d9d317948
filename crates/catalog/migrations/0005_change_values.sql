-- Worker changes are buffered as arrays of column texts indexed by the coordinator table's
-- attribute number: binary-copied in and read back by position, they cost a fraction of JSON
-- objects both ways. Reference tables' changes keep their JSON rows (see 0003).

ALTER TABLE shoal.change_buffer
    ADD COLUMN old_values text[],
    ADD COLUMN new_values text[];

-- Worker changes buffered before this version are not read any more: the stream tables that
-- have not applied them start again from a consistent full refresh.
UPDATE shoal.stream_table SET needs_reinit = true
WHERE consumed_seq < (SELECT coalesce(max(seq), 0) FROM shoal.change_buffer WHERE node_id <> 0);
