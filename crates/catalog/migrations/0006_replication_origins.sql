-- A move's copy writes on the target under replication origins of its own, so that change
-- capture on the target skips the copied rows as it skips what subscriptions apply; the
-- origins are recorded for cleanup like every other object a transfer creates.

ALTER TABLE shoal.cleanup_record DROP CONSTRAINT cleanup_record_object_type_check;
ALTER TABLE shoal.cleanup_record ADD CONSTRAINT cleanup_record_object_type_check
    CHECK (object_type IN ('shard_table', 'publication', 'subscription', 'replication_slot',
                           'replication_origin'));
