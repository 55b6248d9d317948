-- DDL propagation on the coordinator: event triggers that carry plain-SQL DDL on the tables
-- Shoal manages to every shard and replica inside the same transaction, or refuse it before
-- anything changes. See ARCHITECTURE.md ("DDL propagation") for the design.
--
-- The shape is a reconciler: after a statement, the coordinator's definition of a table (what
-- PostgreSQL just changed) is compared with the shard definition the catalog records
-- (`shoal.distributed_table.original_ddl`); the difference is planned as operations
-- (`shoal.ddl_plan`, a pure function of the two definitions), each operation is rendered for
-- every shard (`shoal.ddl_render`, pure), the statements go to every node's inbox through the
-- coordinator's own postgres_fdw connection (so they commit and roll back with the statement's
-- transaction), and the record is rewritten to match.
--
-- Installed and replaced by `shoal init`; Shoal's own connections set `shoal.manage_ddl = off`
-- and are never intercepted.

-- Whether this session's DDL is propagated (everyone's, except Shoal's own connections).
CREATE OR REPLACE FUNCTION shoal.ddl_propagation_on() RETURNS boolean
LANGUAGE sql STABLE AS
$fn$ SELECT coalesce(current_setting('shoal.manage_ddl', true), '') <> 'off' $fn$;

-- The advisory lock key of a colocation group (`shoal_cluster::locks::colocation_key`): shared
-- by the transfers running in the group, exclusive for changing its tables.
CREATE OR REPLACE FUNCTION shoal.colocation_lock_key(colocation_id int) RETURNS bigint
LANGUAGE sql IMMUTABLE AS
$fn$ SELECT (x'5343'::bigint << 48) | (colocation_id::bigint & x'ffffffff'::bigint) $fn$;

-- The managed table a relation belongs to: the table itself, or the table of one of its
-- indexes. A relation of Shoal's own layout (a shard's partition or foreign table, or their
-- indexes) is refused: changing it directly would break the table it belongs to.
CREATE OR REPLACE FUNCTION shoal.ddl_managed_table(rel oid) RETURNS int
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    owner oid := rel;
    found_id int;
    root regclass;
BEGIN
    SELECT i.indrelid INTO owner FROM pg_catalog.pg_index i WHERE i.indexrelid = rel;
    IF NOT FOUND THEN
        owner := rel;
    END IF;
    SELECT t.table_id INTO found_id FROM shoal.distributed_table t WHERE t.relid = owner;
    IF FOUND THEN
        RETURN found_id;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = owner AND c.relispartition) THEN
        root := pg_catalog.pg_partition_root(owner);
        IF EXISTS (SELECT 1 FROM shoal.distributed_table t
                    WHERE t.relid = root AND t.kind IN ('hash', 'schema')) THEN
            RAISE EXCEPTION '% is part of distributed table %, whose partitions Shoal manages',
                    owner::regclass, root
                USING ERRCODE = 'feature_not_supported',
                      HINT = format('change %s itself; the change then reaches every shard', root);
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;

-- How the shards fill a new column's existing rows, decided on the coordinator: the value of a
-- default that is not volatile (evaluated here once, as PostgreSQL does for a plain table), the
-- expression of a volatile built-in one (evaluated per row on the shards), nothing without a
-- default. Refused: defaults the nodes cannot evaluate the same way (sequences, volatile
-- functions of the coordinator's own), and volatile ones on a reference table (its replicas
-- would hold other values than the coordinator).
CREATE OR REPLACE FUNCTION shoal.ddl_backfill(rel oid, kind text, col jsonb) RETURNS text
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    expression text := col->>'default_sql';
    tree text;
    volatile_funcs oid[];
    value text;
BEGIN
    IF expression IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT d.adbin::text INTO tree FROM pg_catalog.pg_attrdef d
     WHERE d.adrelid = rel AND d.adnum = (col->>'attnum')::int;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_depend dep
                JOIN pg_catalog.pg_attrdef d ON d.oid = dep.objid
                JOIN pg_catalog.pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
               WHERE dep.classid = 'pg_catalog.pg_attrdef'::regclass
                 AND d.adrelid = rel AND d.adnum = (col->>'attnum')::int) THEN
        RAISE EXCEPTION 'cannot add column % with default % to %: the existing rows live on the nodes, where the sequence does not exist',
                col->>'name', expression, rel::regclass
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'add the column without a default, then SET DEFAULT, then fill the existing rows with UPDATE';
    END IF;
    SELECT array_agg(p.oid) INTO volatile_funcs
      FROM regexp_matches(tree, ':(?:func|opfunc)id (\d+)', 'g') m
      JOIN pg_catalog.pg_proc p ON p.oid = m[1]::oid
     WHERE p.provolatile = 'v';
    IF volatile_funcs IS NULL THEN
        EXECUTE format('SELECT (%s)::text', expression) INTO value;
        RETURN CASE WHEN value IS NULL THEN NULL
                    ELSE pg_catalog.quote_literal(value) || '::' || (col->>'type_sql') END;
    END IF;
    IF kind = 'reference' OR EXISTS (SELECT 1 FROM unnest(volatile_funcs) f WHERE f >= 16384) THEN
        RAISE EXCEPTION 'cannot add column % with the volatile default % to %: the nodes would not compute the values the coordinator does',
                col->>'name', expression, rel::regclass
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'add the column without a default, then SET DEFAULT, then fill the existing rows with UPDATE';
    END IF;
    RETURN expression;
END
$fn$;

-- The operations that bring a table's shards (or a reference table's replicas) from the
-- `recorded` definition to the `current` one, in the order they must run: drops, renames, type
-- changes, new columns, not-null changes, constraints, indexes, and last a reference table's
-- rename. Both arguments are `describe_table` JSON; new columns of `current` carry their
-- `backfill_sql`. Pure: raises for a change the shards cannot follow.
--
-- Columns are matched by attribute number, which a rename keeps; constraints and indexes by
-- name (a rename is a name that went and one that came with the same definition). Hash and
-- schema tables keep their unique constraints, foreign keys and unique indexes on the shards
-- only (PostgreSQL refuses them on a partitioned table over foreign tables), so only columns,
-- check constraints and plain indexes are compared; a reference table is compared whole.
CREATE OR REPLACE FUNCTION shoal.ddl_plan(kind text, recorded jsonb, current jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    ops jsonb := '[]';
    whole boolean := kind = 'reference';
    table_name text := format('%I.%I', current->'name'->>'schema', current->'name'->>'name');
    rec_cons jsonb;
    cur_cons jsonb;
    rec_idx jsonb;
    cur_idx jsonb;
    gone jsonb;
    came jsonb;
    item jsonb;
    stray text;
BEGIN
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(recorded->'columns') c
                WHERE jsonb_typeof(c.value->'attnum') IS DISTINCT FROM 'number') THEN
        RAISE EXCEPTION 'the catalog''s record of % predates DDL propagation', table_name
            USING HINT = 'run `shoal init` to upgrade it';
    END IF;
    SELECT string_agg(c.value->>'name', ', ') INTO stray
      FROM jsonb_array_elements(current->'columns') c
     WHERE (c.value->>'identity')::boolean OR (c.value->>'generated')::boolean;
    IF stray IS NOT NULL THEN
        RAISE EXCEPTION 'column(s) % of % would be identity or generated columns, which Shoal does not distribute',
                stray, table_name
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'use a plain column with a sequence default (serial) instead';
    END IF;

    -- Columns.
    ops := ops || coalesce((
        SELECT jsonb_agg(jsonb_build_object('op', 'drop_column', 'column', r.value->>'name')
                         ORDER BY (r.value->>'attnum')::int)
          FROM jsonb_array_elements(recorded->'columns') r
         WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(current->'columns') c
                            WHERE c.value->'attnum' = r.value->'attnum')), '[]');
    ops := ops || coalesce((
        SELECT jsonb_agg(jsonb_build_object('op', 'rename_column',
                                            'from', r.value->>'name', 'to', c.value->>'name')
                         ORDER BY (r.value->>'attnum')::int)
          FROM jsonb_array_elements(recorded->'columns') r
          JOIN jsonb_array_elements(current->'columns') c ON c.value->'attnum' = r.value->'attnum'
         WHERE r.value->>'name' <> c.value->>'name'), '[]');
    ops := ops || coalesce((
        SELECT jsonb_agg(jsonb_build_object('op', 'alter_type', 'column', c.value->>'name',
                                            'type_sql', c.value->>'type_sql',
                                            'collation_sql', c.value->'collation_sql')
                         ORDER BY (r.value->>'attnum')::int)
          FROM jsonb_array_elements(recorded->'columns') r
          JOIN jsonb_array_elements(current->'columns') c ON c.value->'attnum' = r.value->'attnum'
         WHERE r.value->>'type_sql' <> c.value->>'type_sql'
            OR r.value->'collation_sql' IS DISTINCT FROM c.value->'collation_sql'), '[]');
    ops := ops || coalesce((
        SELECT jsonb_agg(jsonb_build_object('op', 'add_column', 'column', c.value)
                         ORDER BY (c.value->>'attnum')::int)
          FROM jsonb_array_elements(current->'columns') c
         WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(recorded->'columns') r
                            WHERE r.value->'attnum' = c.value->'attnum')), '[]');
    ops := ops || coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'op', CASE WHEN (c.value->>'not_null')::boolean THEN 'set_not_null'
                              ELSE 'drop_not_null' END,
                   'column', c.value->>'name')
                         ORDER BY (r.value->>'attnum')::int)
          FROM jsonb_array_elements(recorded->'columns') r
          JOIN jsonb_array_elements(current->'columns') c ON c.value->'attnum' = r.value->'attnum'
         WHERE r.value->'not_null' <> c.value->'not_null'), '[]');

    -- Constraints: the coordinator of a hash or schema table holds only its check constraints;
    -- anything else there was made with ONLY and would exist on the coordinator alone.
    SELECT coalesce(jsonb_agg(c.value), '[]') INTO rec_cons
      FROM jsonb_array_elements(recorded->'constraints') c
     WHERE whole OR c.value->>'kind' = 'Check';
    SELECT coalesce(jsonb_agg(c.value), '[]') INTO cur_cons
      FROM jsonb_array_elements(current->'constraints') c;
    IF NOT whole THEN
        SELECT string_agg(c.value->>'name', ', ') INTO stray
          FROM jsonb_array_elements(cur_cons) c WHERE c.value->>'kind' <> 'Check';
        IF stray IS NOT NULL THEN
            RAISE EXCEPTION 'constraint(s) % would exist on the coordinator''s % alone', stray, table_name
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'unique constraints, primary keys and foreign keys of a distributed table live on its shards: add them with `shoal ddl`';
        END IF;
    END IF;
    SELECT coalesce(jsonb_agg(r.value), '[]') INTO gone
      FROM jsonb_array_elements(rec_cons) r
     WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(cur_cons) c
                        WHERE c.value->>'name' = r.value->>'name');
    SELECT coalesce(jsonb_agg(c.value), '[]') INTO came
      FROM jsonb_array_elements(cur_cons) c
     WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(rec_cons) r
                        WHERE r.value->>'name' = c.value->>'name');
    IF jsonb_array_length(gone) = 1 AND jsonb_array_length(came) = 1
       AND gone->0->>'definition' = came->0->>'definition' THEN
        ops := ops || jsonb_build_object('op', 'rename_constraint',
                                         'from', gone->0->>'name', 'to', came->0->>'name');
    ELSE
        FOR item IN SELECT value FROM jsonb_array_elements(gone) LOOP
            ops := ops || jsonb_build_object('op', 'drop_constraint', 'name', item->>'name');
        END LOOP;
        FOR item IN SELECT value FROM jsonb_array_elements(came) LOOP
            ops := ops || jsonb_build_object('op', 'add_constraint', 'name', item->>'name',
                                             'definition', item->>'definition');
        END LOOP;
    END IF;
    ops := ops || coalesce((
        SELECT jsonb_agg(jsonb_build_object('op', 'validate_constraint', 'name', c.value->>'name'))
          FROM jsonb_array_elements(cur_cons) c
          JOIN jsonb_array_elements(rec_cons) r ON r.value->>'name' = c.value->>'name'
         WHERE r.value->>'definition' LIKE '% NOT VALID'
           AND c.value->>'definition' NOT LIKE '% NOT VALID'), '[]');

    -- Indexes, the same way.
    SELECT coalesce(jsonb_agg(i.value), '[]') INTO rec_idx
      FROM jsonb_array_elements(recorded->'indexes') i
     WHERE whole OR NOT (i.value->>'unique')::boolean;
    SELECT coalesce(jsonb_agg(i.value), '[]') INTO cur_idx
      FROM jsonb_array_elements(current->'indexes') i;
    IF NOT whole THEN
        SELECT string_agg(i.value->>'name', ', ') INTO stray
          FROM jsonb_array_elements(cur_idx) i WHERE (i.value->>'unique')::boolean;
        IF stray IS NOT NULL THEN
            RAISE EXCEPTION 'unique index(es) % would exist on the coordinator''s % alone', stray, table_name
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'unique indexes of a distributed table live on its shards: create them with `shoal ddl`';
        END IF;
    END IF;
    SELECT coalesce(jsonb_agg(r.value), '[]') INTO gone
      FROM jsonb_array_elements(rec_idx) r
     WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(cur_idx) c
                        WHERE c.value->>'name' = r.value->>'name');
    SELECT coalesce(jsonb_agg(c.value), '[]') INTO came
      FROM jsonb_array_elements(cur_idx) c
     WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(rec_idx) r
                        WHERE r.value->>'name' = c.value->>'name');
    IF jsonb_array_length(gone) = 1 AND jsonb_array_length(came) = 1
       AND gone->0->>'method_and_keys' = came->0->>'method_and_keys'
       AND gone->0->'unique' = came->0->'unique' THEN
        ops := ops || jsonb_build_object('op', 'rename_index',
                                         'from', gone->0->>'name', 'to', came->0->>'name');
    ELSE
        FOR item IN SELECT value FROM jsonb_array_elements(gone) LOOP
            ops := ops || jsonb_build_object('op', 'drop_index', 'name', item->>'name');
        END LOOP;
        FOR item IN SELECT value FROM jsonb_array_elements(came) LOOP
            ops := ops || jsonb_build_object('op', 'create_index', 'name', item->>'name',
                                             'unique', item->'unique',
                                             'method_and_keys', item->>'method_and_keys');
        END LOOP;
    END IF;

    -- The table's own name: shard tables keep theirs; a reference table's replicas are found by
    -- name, so they follow.
    IF recorded->'name' <> current->'name' THEN
        ops := ops || jsonb_build_object('op', 'rename_table',
                                         'from', recorded->'name', 'to', current->'name');
    END IF;
    RETURN jsonb_build_object('ops', ops);
END
$fn$;

-- The statements that carry out one operation on one shard (or replica): `target` is its
-- schema and name, `suffix` the shard id its objects' names end with (NULL for a replica, whose
-- objects keep the coordinator's names). Shard tables keep no defaults (the coordinator
-- computes every value it sends), so a new column's default only fills the existing rows.
CREATE OR REPLACE FUNCTION shoal.ddl_render(op jsonb, target_schema text, target_name text, suffix text)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    tbl text := format('%I.%I', target_schema, target_name);
    col jsonb := op->'column';
BEGIN
    CASE op->>'op'
    WHEN 'drop_column' THEN
        RETURN ARRAY[format('ALTER TABLE %s DROP COLUMN %I', tbl, op->>'column')];
    WHEN 'rename_column' THEN
        RETURN ARRAY[format('ALTER TABLE %s RENAME COLUMN %I TO %I', tbl, op->>'from', op->>'to')];
    WHEN 'alter_type' THEN
        RETURN ARRAY[format('ALTER TABLE %s ALTER COLUMN %I TYPE %s%s', tbl, op->>'column',
                            op->>'type_sql', coalesce(' COLLATE ' || (op->>'collation_sql'), ''))];
    WHEN 'add_column' THEN
        -- Two statements: ALTER TABLE runs a DROP DEFAULT before an ADD COLUMN of the same
        -- statement. The existing rows keep the values the default gave them.
        RETURN ARRAY(
            SELECT s FROM unnest(ARRAY[
                format('ALTER TABLE %s ADD COLUMN %I %s%s%s%s', tbl, col->>'name',
                       col->>'type_sql',
                       coalesce(' COLLATE ' || (col->>'collation_sql'), ''),
                       coalesce(' DEFAULT ' || (col->>'backfill_sql'), ''),
                       CASE WHEN (col->>'not_null')::boolean THEN ' NOT NULL' ELSE '' END),
                CASE WHEN col->>'backfill_sql' IS NOT NULL THEN
                    format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', tbl, col->>'name') END]) s
            WHERE s IS NOT NULL);
    WHEN 'set_not_null' THEN
        RETURN ARRAY[format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, op->>'column')];
    WHEN 'drop_not_null' THEN
        RETURN ARRAY[format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', tbl, op->>'column')];
    WHEN 'add_constraint' THEN
        RETURN ARRAY[format('ALTER TABLE %s ADD CONSTRAINT %I %s', tbl,
                            shoal.ddl_object_name(op->>'name', suffix), op->>'definition')];
    WHEN 'drop_constraint' THEN
        RETURN ARRAY[format('ALTER TABLE %s DROP CONSTRAINT %I', tbl,
                            shoal.ddl_object_name(op->>'name', suffix))];
    WHEN 'validate_constraint' THEN
        RETURN ARRAY[format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl,
                            shoal.ddl_object_name(op->>'name', suffix))];
    WHEN 'rename_constraint' THEN
        RETURN ARRAY[format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', tbl,
                            shoal.ddl_object_name(op->>'from', suffix),
                            shoal.ddl_object_name(op->>'to', suffix))];
    WHEN 'create_index' THEN
        -- IF NOT EXISTS: `shoal ddl` builds an index CONCURRENTLY on the shards first, then
        -- makes the coordinator's, which arrives here.
        RETURN ARRAY[format('CREATE %sINDEX IF NOT EXISTS %I ON %s USING %s',
                            CASE WHEN (op->>'unique')::boolean THEN 'UNIQUE ' ELSE '' END,
                            shoal.ddl_object_name(op->>'name', suffix), tbl, op->>'method_and_keys')];
    WHEN 'drop_index' THEN
        RETURN ARRAY[format('DROP INDEX IF EXISTS %I.%I', target_schema,
                            shoal.ddl_object_name(op->>'name', suffix))];
    WHEN 'rename_index' THEN
        RETURN ARRAY[format('ALTER INDEX %I.%I RENAME TO %I', target_schema,
                            shoal.ddl_object_name(op->>'from', suffix),
                            shoal.ddl_object_name(op->>'to', suffix))];
    WHEN 'rename_table' THEN
        IF suffix IS NOT NULL THEN
            RETURN '{}';
        END IF;
        RETURN ARRAY(
            SELECT s FROM unnest(ARRAY[
                CASE WHEN op->'from'->>'schema' <> op->'to'->>'schema' THEN
                    format('CREATE SCHEMA IF NOT EXISTS %I', op->'to'->>'schema') END,
                CASE WHEN op->'from'->>'schema' <> op->'to'->>'schema' THEN
                    format('ALTER TABLE %s SET SCHEMA %I', tbl, op->'to'->>'schema') END,
                CASE WHEN op->'from'->>'name' <> op->'to'->>'name' THEN
                    format('ALTER TABLE %I.%I RENAME TO %I', op->'to'->>'schema',
                           op->'from'->>'name', op->'to'->>'name') END]) s
            WHERE s IS NOT NULL);
    ELSE
        RAISE EXCEPTION 'unknown DDL operation %', op;
    END CASE;
END
$fn$;

-- A shard's name for one of its table's constraints or indexes.
CREATE OR REPLACE FUNCTION shoal.ddl_object_name(name text, suffix text) RETURNS text
LANGUAGE sql IMMUTABLE AS
$fn$ SELECT CASE WHEN suffix IS NULL THEN name ELSE shoal.derived_name(name, suffix) END $fn$;

-- Runs statements on a node inside this transaction (through the coordinator's postgres_fdw
-- connection to it, so they commit and roll back with it) and returns the definition of
-- `describe` afterwards, when asked. A node's refusal becomes the statement's error, with the
-- node named and PostgreSQL's error code kept.
CREATE OR REPLACE FUNCTION shoal.ddl_send(node int, statements text[], describe text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    inbox text := 'ddl_inbox_' || node;
    address text;
    result jsonb;
    message text;
    detail text;
    hint text;
BEGIN
    SELECT format('%s:%s', n.host, n.port) INTO address FROM shoal.node n WHERE n.node_id = node;
    IF to_regclass(format('shoal.%I', inbox)) IS NULL THEN
        RAISE EXCEPTION 'node % (%) cannot take DDL yet', node, address
            USING HINT = 'run `shoal init` once to prepare every node';
    END IF;
    BEGIN
        EXECUTE format('INSERT INTO shoal.%I (coordinator_xid, statements, describe) VALUES ($1, $2, $3) RETURNING result', inbox)
           INTO result USING pg_current_xact_id()::text, statements, describe;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL,
                                hint = PG_EXCEPTION_HINT;
        hint := coalesce(nullif(hint, ''),
                         'nothing was changed on any node; fix the cause and run the statement again');
        IF coalesce(detail, '') = '' THEN
            RAISE EXCEPTION 'node % (%): %', node, address, message
                USING ERRCODE = SQLSTATE, HINT = hint;
        END IF;
        RAISE EXCEPTION 'node % (%): %', node, address, message
            USING ERRCODE = SQLSTATE, DETAIL = detail, HINT = hint;
    END;
    RETURN result;
END
$fn$;

-- Waits until every node's subscription to the reference tables has applied everything the
-- coordinator committed before now, so that a replica changed next gets no older change in
-- the old shape (its apply would fail, and stop every reference table's replication).
--
-- "Now" is the current WAL insert position, which is past every commit before this
-- statement's locks. A walsender reads only flushed WAL, and nothing flushes this
-- transaction's own last records before it commits (the WAL writer flushes completed pages),
-- so a non-transactional message is written to complete their page: PostgreSQL 17 flushes it
-- on request, older versions' WAL writer within `wal_writer_delay`.
CREATE OR REPLACE FUNCTION shoal.ddl_wait_for_replicas(timeout interval DEFAULT '10 seconds')
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    target pg_lsn := pg_current_wal_insert_lsn();
    deadline timestamptz := clock_timestamp() + timeout;
    behind text;
BEGIN
    IF current_setting('server_version_num')::int >= 170000 THEN
        EXECUTE $sql$SELECT pg_logical_emit_message(false, 'shoal', '', true)$sql$;
    ELSE
        PERFORM pg_logical_emit_message(false, 'shoal', repeat(' ', 8192));
    END IF;
    LOOP
        SELECT string_agg(s.slot_name::text, ', ') INTO behind
          FROM pg_catalog.pg_replication_slots s
         WHERE s.slot_name::text IN (SELECT 'shoal_reference_' || n.node_id FROM shoal.node n)
           AND (s.confirmed_flush_lsn IS NULL OR s.confirmed_flush_lsn < target);
        EXIT WHEN behind IS NULL;
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'the reference table replicas of subscription(s) % are behind the coordinator', behind
                USING HINT = 'check that the nodes are up and their subscriptions enabled (pg_stat_subscription on the node), then try again';
        END IF;
        PERFORM pg_sleep(0.005);
    END LOOP;
END
$fn$;

-- The shard-only parts of a record (unique constraints, foreign keys, unique indexes of a hash
-- or schema table), as the shard `readback` now defines them: PostgreSQL rewrote their column
-- references when columns were renamed, dropped those over dropped columns, and so on.
CREATE OR REPLACE FUNCTION shoal.ddl_refresh_shard_only(recorded jsonb, readback jsonb, suffix text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    constraints jsonb := '[]';
    indexes jsonb := '[]';
    item jsonb;
    seen jsonb;
BEGIN
    FOR item IN SELECT value FROM jsonb_array_elements(recorded->'constraints')
                 WHERE value->>'kind' <> 'Check' LOOP
        seen := NULL;
        IF readback IS NULL THEN
            seen := item;
        ELSE
            SELECT value INTO seen FROM jsonb_array_elements(readback->'constraints')
             WHERE value->>'name' = shoal.derived_name(item->>'name', suffix);
            IF seen IS NOT NULL THEN
                seen := item || jsonb_build_object('columns', seen->'columns',
                                                   'definition', seen->'definition')
                        || CASE WHEN item->'foreign_key' = 'null' THEN '{}'::jsonb ELSE
                           jsonb_build_object('foreign_key', item->'foreign_key' || jsonb_build_object(
                               'columns', seen->'foreign_key'->'columns',
                               'referenced_columns', seen->'foreign_key'->'referenced_columns',
                               'actions_sql', seen->'foreign_key'->'actions_sql')) END;
            END IF;
        END IF;
        IF seen IS NOT NULL THEN
            constraints := constraints || jsonb_build_array(seen);
        END IF;
    END LOOP;
    FOR item IN SELECT value FROM jsonb_array_elements(recorded->'indexes')
                 WHERE (value->>'unique')::boolean LOOP
        seen := NULL;
        IF readback IS NULL THEN
            seen := item;
        ELSE
            SELECT value INTO seen FROM jsonb_array_elements(readback->'indexes')
             WHERE value->>'name' = shoal.derived_name(item->>'name', suffix);
            IF seen IS NOT NULL THEN
                seen := item || jsonb_build_object('key_columns', seen->'key_columns',
                                                   'method_and_keys', seen->'method_and_keys');
            END IF;
        END IF;
        IF seen IS NOT NULL THEN
            indexes := indexes || jsonb_build_array(seen);
        END IF;
    END LOOP;
    RETURN jsonb_build_object('constraints', constraints, 'indexes', indexes);
END
$fn$;

-- Foreign keys of other tables that point at a table follow its renames (of the table and of
-- its columns) in their records.
CREATE OR REPLACE FUNCTION shoal.ddl_retarget_foreign_keys(table_id int, before jsonb, after jsonb, ops jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    renames jsonb;
BEGIN
    SELECT coalesce(jsonb_object_agg(o.value->>'from', o.value->>'to'), '{}') INTO renames
      FROM jsonb_array_elements(ops) o WHERE o.value->>'op' = 'rename_column';
    IF renames = '{}' AND before = after THEN
        RETURN;
    END IF;
    UPDATE shoal.distributed_table d
       SET original_ddl = jsonb_set(d.original_ddl, '{constraints}', (
           SELECT coalesce(jsonb_agg(
                      CASE WHEN c.value->'foreign_key'->'referenced' = before THEN
                          jsonb_set(c.value, '{foreign_key}', c.value->'foreign_key' || jsonb_build_object(
                              'referenced', after,
                              'referenced_columns', (
                                  SELECT coalesce(jsonb_agg(coalesce(renames->(k.value #>> '{}'), k.value)
                                                            ORDER BY k.ordinality), '[]')
                                    FROM jsonb_array_elements(c.value->'foreign_key'->'referenced_columns')
                                         WITH ORDINALITY k)))
                      ELSE c.value END ORDER BY c.ordinality), '[]')
             FROM jsonb_array_elements(d.original_ddl->'constraints') WITH ORDINALITY c))
     WHERE d.table_id <> ddl_retarget_foreign_keys.table_id
       AND EXISTS (SELECT 1 FROM jsonb_array_elements(d.original_ddl->'constraints') c
                    WHERE c.value->'foreign_key'->'referenced' = before);
END
$fn$;

-- Brings one managed table's shards (or replicas) and its record in line with what a
-- statement just did to it on the coordinator, or refuses the statement.
CREATE OR REPLACE FUNCTION shoal.ddl_reconcile(tid int, command_tag text)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    entry record;
    current jsonb;
    plan jsonb;
    ops jsonb;
    col jsonb;
    node record;
    statements text[];
    shard record;
    op jsonb;
    readback jsonb;
    needs_readback boolean;
    first_suffix text;
    shard_only jsonb;
    updated jsonb;
    streams text;
    stray text;
BEGIN
    SELECT t.table_id, t.relid, t.kind, t.colocation_id, t.distribution_column,
           t.original_ddl AS recorded, g.shard_count
      INTO entry
      FROM shoal.distributed_table t JOIN shoal.colocation_group g USING (colocation_id)
     WHERE t.table_id = tid;
    current := shoal.describe_table(entry.relid);

    -- The layout under a hash or schema table is Shoal's: one partitioned table per shard with
    -- one foreign table in it (a schema table is that partitioned table itself).
    IF entry.kind IN ('hash', 'schema') THEN
        SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') INTO stray
          FROM pg_catalog.pg_partition_tree(entry.relid) p
          JOIN pg_catalog.pg_class c ON c.oid = p.relid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE p.isleaf AND NOT EXISTS (
               SELECT 1 FROM shoal.shard s
                WHERE s.table_id = tid AND s.schema_name = n.nspname AND s.shard_name = c.relname
                  AND c.relkind = 'f');
        IF stray IS NOT NULL OR (SELECT count(*) FROM pg_catalog.pg_partition_tree(entry.relid) p
                                  WHERE p.isleaf) <> (SELECT count(*) FROM shoal.shard s
                                                       WHERE s.table_id = tid) THEN
            RAISE EXCEPTION 'the partitions of distributed table % are Shoal''s: attaching or detaching them would lose or hide rows',
                    entry.relid::regclass
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'to change how the table is split, undistribute it (`shoal table undistribute`) and distribute it again';
        END IF;
    END IF;

    -- New columns learn how their existing rows are filled.
    SELECT jsonb_set(current, '{columns}', coalesce(jsonb_agg(
               CASE WHEN NOT EXISTS (SELECT 1 FROM jsonb_array_elements(entry.recorded->'columns') r
                                      WHERE r.value->'attnum' = c.value->'attnum')
                    THEN c.value || jsonb_build_object('backfill_sql',
                                        shoal.ddl_backfill(entry.relid, entry.kind, c.value))
                    ELSE c.value END ORDER BY c.ordinality), '[]'))
      INTO current
      FROM jsonb_array_elements(current->'columns') WITH ORDINALITY c;

    plan := shoal.ddl_plan(entry.kind, entry.recorded, current);
    ops := plan->'ops';
    -- Only the record changes (a default, a comment, an owner): nothing to send.
    IF jsonb_array_length(ops) > 0 THEN
        -- Transfers hold their group's lock while they run (for a reference table, the copy
        -- of it to a new node); the lock is held to the end of this transaction, so the
        -- transfers started after it read the new definition.
        IF NOT pg_try_advisory_xact_lock(shoal.colocation_lock_key(entry.colocation_id)) THEN
            RAISE EXCEPTION 'a shard of % is being moved or copied, so its definition cannot change now', entry.relid::regclass
                USING ERRCODE = 'lock_not_available',
                      HINT = 'wait for the move to finish (SELECT * FROM shoal.rebalance_progress) or cancel it (`shoal shard cancel`), then run the statement again';
        END IF;
        SELECT string_agg(s.relid::regclass::text, ', ') INTO streams
          FROM shoal.stream_source ss JOIN shoal.stream_table s USING (stream_id)
         WHERE ss.table_id = tid
           AND EXISTS (SELECT 1 FROM jsonb_array_elements(ops) o
                        WHERE o.value->>'op' IN ('drop_column', 'rename_column', 'alter_type', 'rename_table'));
        IF streams IS NOT NULL THEN
            RAISE EXCEPTION 'stream table(s) % read % and would no longer match their query', streams, entry.relid::regclass
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = 'drop the stream table(s) with `shoal stream drop`, change the table, then create them again';
        END IF;

        needs_readback := entry.kind <> 'reference' AND EXISTS (
            SELECT 1 FROM jsonb_array_elements(ops) o
             WHERE o.value->>'op' IN ('drop_column', 'rename_column', 'alter_type'));
        IF entry.kind = 'reference' THEN
            PERFORM shoal.ddl_wait_for_replicas();
        END IF;
        FOR node IN SELECT p.node_id FROM shoal.shard s JOIN shoal.placement p USING (shard_id)
                     WHERE s.table_id = tid GROUP BY p.node_id ORDER BY p.node_id LOOP
            statements := '{}';
            shard := NULL;
            FOR shard IN SELECT s.shard_id, s.schema_name, s.shard_name
                           FROM shoal.shard s JOIN shoal.placement p USING (shard_id)
                          WHERE s.table_id = tid AND p.node_id = node.node_id
                          ORDER BY s.shard_index LOOP
                FOR op IN SELECT value FROM jsonb_array_elements(ops) LOOP
                    IF entry.kind = 'reference' THEN
                        statements := statements || shoal.ddl_render(op,
                            entry.recorded->'name'->>'schema', entry.recorded->'name'->>'name', NULL);
                    ELSE
                        statements := statements || shoal.ddl_render(op,
                            shard.schema_name, shard.shard_name, shard.shard_id::text);
                    END IF;
                END LOOP;
                IF needs_readback AND first_suffix IS NULL THEN
                    first_suffix := shard.shard_id::text;
                    readback := shoal.ddl_send(node.node_id, statements,
                                               format('%I.%I', shard.schema_name, shard.shard_name));
                    statements := '{}';
                END IF;
            END LOOP;
            IF cardinality(statements) > 0 THEN
                PERFORM shoal.ddl_send(node.node_id, statements);
            END IF;
        END LOOP;
    END IF;

    -- The record: the coordinator's definition, plus for a hash or schema table what only its
    -- shards hold.
    IF entry.kind = 'reference' THEN
        updated := current;
    ELSE
        shard_only := shoal.ddl_refresh_shard_only(entry.recorded, readback, first_suffix);
        updated := jsonb_build_object(
            'relid', entry.recorded->'relid',
            'name', current->'name',
            'relkind', entry.recorded->'relkind',
            'columns', current->'columns',
            'constraints', (current->'constraints') || (shard_only->'constraints'),
            'indexes', (current->'indexes') || (shard_only->'indexes'),
            'replica_identity', entry.recorded->'replica_identity');
    END IF;
    SELECT jsonb_set(updated, '{columns}', coalesce(jsonb_agg(c.value - 'backfill_sql' ORDER BY c.ordinality), '[]'))
      INTO updated
      FROM jsonb_array_elements(updated->'columns') WITH ORDINALITY c;
    UPDATE shoal.distributed_table t
       SET original_ddl = updated,
           distribution_column = coalesce((
               SELECT o.value->>'to' FROM jsonb_array_elements(ops) o
                WHERE o.value->>'op' = 'rename_column' AND o.value->>'from' = t.distribution_column),
               t.distribution_column)
     WHERE t.table_id = tid;
    IF entry.kind = 'reference' THEN
        -- A replica is named like its table.
        UPDATE shoal.shard s
           SET schema_name = current->'name'->>'schema', shard_name = current->'name'->>'name'
         WHERE s.table_id = tid;
    END IF;
    PERFORM shoal.ddl_retarget_foreign_keys(tid, entry.recorded->'name', current->'name', ops);
    IF jsonb_array_length(ops) > 0 THEN
        INSERT INTO shoal.ddl_change (table_id, command_tag, operations)
        VALUES (tid, command_tag, ops);
    END IF;
END
$fn$;

-- DROP of managed tables: their shards go too, inside the statement's transaction (a node that
-- cannot be reached gets cleanup records instead, so `shoal cleanup` removes them once it is
-- back), and so do their catalog rows.
CREATE OR REPLACE FUNCTION shoal.ddl_drop_tables(tids int[], dropped_schemas text[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    blocker record;
    node record;
    operation bigint;
    references_first boolean;
BEGIN
    SELECT s.relid::regclass::text AS stream, t.original_ddl->'name'->>'name' AS source INTO blocker
      FROM shoal.stream_source ss
      JOIN shoal.stream_table s USING (stream_id)
      JOIN shoal.distributed_table t USING (table_id)
     WHERE ss.table_id = ANY (tids) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'stream table % reads %', blocker.stream, blocker.source
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'drop the stream table first with `shoal stream drop`';
    END IF;
    SELECT format('%I.%I', o.original_ddl->'name'->>'schema', o.original_ddl->'name'->>'name') AS referencing,
           c.value->>'name' AS constraint_name,
           format('%I.%I', c.value->'foreign_key'->'referenced'->>'schema',
                  c.value->'foreign_key'->'referenced'->>'name') AS referenced
      INTO blocker
      FROM shoal.distributed_table o
      CROSS JOIN LATERAL jsonb_array_elements(o.original_ddl->'constraints') c
     WHERE o.table_id <> ALL (tids)
       AND c.value->'foreign_key'->'referenced' IN (
           SELECT d.original_ddl->'name' FROM shoal.distributed_table d WHERE d.table_id = ANY (tids))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot drop %: foreign key % of % references it on the shards',
                blocker.referenced, blocker.constraint_name, blocker.referencing
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'drop that constraint (or that table) first';
    END IF;
    IF EXISTS (SELECT 1 FROM shoal.distributed_table d
                WHERE d.table_id = ANY (tids) AND d.kind IN ('hash', 'schema')
                  AND NOT pg_try_advisory_xact_lock(shoal.colocation_lock_key(d.colocation_id))) THEN
        RAISE EXCEPTION 'a shard of a table being dropped is being moved'
            USING ERRCODE = 'lock_not_available',
                  HINT = 'wait for the move to finish (SELECT * FROM shoal.rebalance_progress) or cancel it, then drop again';
    END IF;
    SELECT EXISTS (SELECT 1 FROM shoal.distributed_table d
                    WHERE d.table_id = ANY (tids) AND d.kind = 'reference') INTO references_first;
    IF references_first THEN
        PERFORM shoal.ddl_wait_for_replicas();
    END IF;

    FOR node IN
        SELECT p.node_id,
               string_agg(format('%I.%I', s.schema_name, s.shard_name), ', '
                          ORDER BY s.table_id DESC, s.shard_index) AS shard_tables
          FROM shoal.distributed_table d
          JOIN shoal.shard s USING (table_id)
          JOIN shoal.placement p USING (shard_id)
         WHERE d.table_id = ANY (tids)
         GROUP BY p.node_id ORDER BY p.node_id
    LOOP
        BEGIN
            PERFORM shoal.ddl_send(node.node_id,
                ARRAY[format('DROP TABLE IF EXISTS %s', node.shard_tables)]);
        EXCEPTION WHEN sqlclient_unable_to_establish_sqlconnection OR connection_failure
                       OR connection_exception THEN
            operation := coalesce(operation, nextval('shoal.operation_id_seq'));
            INSERT INTO shoal.cleanup_record
                   (operation_id, object_type, schema_name, object_name, node_id, policy)
            SELECT operation, 'shard_table', s.schema_name, s.shard_name, p.node_id, 'always'
              FROM shoal.shard s JOIN shoal.placement p USING (shard_id)
             WHERE s.table_id = ANY (tids) AND p.node_id = node.node_id;
            RAISE WARNING 'node % is unreachable: its shards of the dropped table(s) are left to `shoal cleanup`',
                node.node_id;
        END;
    END LOOP;

    INSERT INTO shoal.ddl_change (table_id, command_tag, operations)
    SELECT t, 'DROP TABLE', '[{"op": "drop_table"}]'::jsonb FROM unnest(tids) t;
    DELETE FROM shoal.distributed_table d WHERE d.table_id = ANY (tids);
    DELETE FROM shoal.colocation_group g
     WHERE (g.kind = 'hash' OR g.schema_name = ANY (dropped_schemas))
       AND NOT EXISTS (SELECT 1 FROM shoal.distributed_table d WHERE d.colocation_id = g.colocation_id);
END
$fn$;

-- CREATE TABLE in a distributed schema: the new table joins the schema's shard group, as
-- `shoal schema sync` would place it, inside the statement's transaction. Its shard is built
-- on the group's node through the inbox (it commits with the statement), then the coordinator's
-- table becomes the schema layout: a partitioned table with one foreign partition, holding the
-- rows a CREATE TABLE AS put in it.
CREATE OR REPLACE FUNCTION shoal.ddl_place_in_schema(rel oid, group_id int)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    def jsonb := shoal.describe_table(rel);
    nsp text := def->'name'->>'schema';
    tbl text := def->'name'->>'name';
    hidden text := '__shoal_created_' || rel;
    node int;
    fdw text;
    new_shard bigint;
    shard_name text;
    key_column text;
    ops jsonb;
    op jsonb;
    statements text[];
    target record;
    fk jsonb;
    col record;
    new_rel oid;
    new_table int;
    manage text := current_setting('shoal.manage_ddl', true);
BEGIN
    IF def->>'relkind' <> 'r' THEN
        RAISE EXCEPTION '%.% is not a plain table; distributed schemas hold plain tables only', nsp, tbl
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT p.node_id INTO node
      FROM shoal.distributed_table t JOIN shoal.shard s USING (table_id)
      JOIN shoal.placement p USING (shard_id)
     WHERE t.colocation_id = group_id LIMIT 1;
    IF node IS NULL THEN
        SELECT n.node_id INTO node FROM shoal.node n
         WHERE n.is_active AND n.should_have_shards
         ORDER BY (SELECT count(*) FROM shoal.placement p JOIN shoal.shard s USING (shard_id)
                    JOIN shoal.distributed_table t USING (table_id)
                   WHERE p.node_id = n.node_id AND t.kind <> 'reference'), n.node_id
         LIMIT 1;
    END IF;
    IF node IS NULL THEN
        RAISE EXCEPTION 'no active node can take the tables of distributed schema %', nsp
            USING HINT = 'add one with `shoal node add HOST:PORT`';
    END IF;
    SELECT n.fdw_server INTO fdw FROM shoal.node n WHERE n.node_id = node;
    new_shard := nextval('shoal.shard_id_seq');
    shard_name := shoal.derived_name(tbl, new_shard::text);

    -- The shard: every part of the table, planned as if added to an empty one (the planner
    -- refuses identity and generated columns), and foreign keys pointed at the shards of the
    -- schema's tables or at reference tables.
    ops := shoal.ddl_plan('reference',
                          jsonb_build_object('name', def->'name', 'columns', '[]'::jsonb,
                                             'constraints', '[]'::jsonb, 'indexes', '[]'::jsonb),
                          def)->'ops';
    statements := ARRAY[format('CREATE SCHEMA IF NOT EXISTS %I', nsp),
                        format('CREATE TABLE %I.%I ()', nsp, shard_name)];
    FOR op IN SELECT value FROM jsonb_array_elements(ops) LOOP
        fk := (SELECT c.value->'foreign_key' FROM jsonb_array_elements(def->'constraints') c
                WHERE op->>'op' = 'add_constraint' AND c.value->>'name' = op->>'name'
                  AND c.value->>'kind' = 'ForeignKey');
        IF fk IS NOT NULL THEN
            SELECT s.schema_name, s.shard_name INTO target
              FROM shoal.distributed_table t JOIN shoal.shard s USING (table_id)
             WHERE t.relid = (fk->>'referenced_relid')::oid
               AND (t.colocation_id = group_id OR t.kind = 'reference')
             LIMIT 1;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'foreign key % of %.% must reference a table of schema % or a reference table',
                        op->>'name', nsp, tbl, nsp
                    USING ERRCODE = 'feature_not_supported';
            END IF;
            op := op || jsonb_build_object('definition', format('FOREIGN KEY (%s) REFERENCES %I.%I (%s) %s',
                (SELECT string_agg(quote_ident(c #>> '{}'), ', ') FROM jsonb_array_elements(fk->'columns') c),
                target.schema_name, target.shard_name,
                (SELECT string_agg(quote_ident(c #>> '{}'), ', ') FROM jsonb_array_elements(fk->'referenced_columns') c),
                fk->>'actions_sql'));
        END IF;
        statements := statements || shoal.ddl_render(op, nsp, shard_name, new_shard::text);
    END LOOP;
    IF def->'replica_identity' = '"Full"' THEN
        statements := statements || format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', nsp, shard_name);
    END IF;
    PERFORM shoal.ddl_send(node, statements);

    -- Rows route by a hashable column (any does: the one partition takes them all).
    FOR col IN
        SELECT c.value->>'name' AS name, c.value->>'type_sql' AS type_sql
          FROM jsonb_array_elements(def->'columns') WITH ORDINALITY c
         ORDER BY (c.value->>'name') = ANY (ARRAY(
                      SELECT k.value #>> '{}'
                        FROM jsonb_array_elements(def->'constraints') pk,
                             jsonb_array_elements(pk.value->'columns') WITH ORDINALITY k
                       WHERE pk.value->>'kind' = 'PrimaryKey' AND k.ordinality = 1)) DESC,
                  c.ordinality
    LOOP
        BEGIN
            EXECUTE format('CREATE TEMP TABLE shoal_hash_probe (k %s) PARTITION BY HASH (k)', col.type_sql);
            EXECUTE 'DROP TABLE shoal_hash_probe';
            key_column := col.name;
            EXIT;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
    IF key_column IS NULL THEN
        RAISE EXCEPTION '%.% has no column of a hashable type, which Shoal needs to route its rows', nsp, tbl
            USING ERRCODE = 'feature_not_supported', HINT = 'add one';
    END IF;

    -- The coordinator's side, by Shoal itself (not propagated again).
    PERFORM set_config('shoal.manage_ddl', 'off', true);
    EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', nsp, tbl, hidden);
    EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY HASH (%I)',
                   nsp, tbl, nsp, hidden, key_column);
    EXECUTE format('CREATE FOREIGN TABLE %I.%I PARTITION OF %I.%I FOR VALUES WITH (MODULUS 1, REMAINDER 0) SERVER %I OPTIONS (schema_name %L, table_name %L)',
                   nsp, shard_name, nsp, tbl, fdw, nsp, shard_name);
    new_rel := format('%I.%I', nsp, tbl)::regclass;
    EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I', nsp, tbl, nsp, hidden);
    FOR col IN
        SELECT s.oid::regclass::text AS sequence_name, a.attname::text AS column_name
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refobjid = rel AND d.deptype = 'a'
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNED BY %I.%I.%I', col.sequence_name, nsp, tbl, col.column_name);
    END LOOP;
    EXECUTE format('DROP TABLE %I.%I', nsp, hidden);
    FOR op IN SELECT value FROM jsonb_array_elements(def->'indexes') WHERE NOT (value->>'unique')::boolean LOOP
        EXECUTE format('CREATE INDEX %I ON %I.%I USING %s', op->>'name', nsp, tbl, op->>'method_and_keys');
    END LOOP;
    PERFORM set_config('shoal.manage_ddl', coalesce(manage, ''), true);

    INSERT INTO shoal.distributed_table (relid, kind, distribution_column, colocation_id, original_ddl)
    VALUES (new_rel, 'schema', NULL, group_id,
            jsonb_set(def, '{columns}', shoal.describe_table(new_rel)->'columns'))
    RETURNING table_id INTO new_table;
    INSERT INTO shoal.shard (shard_id, table_id, shard_index, schema_name, shard_name)
    VALUES (new_shard, new_table, 0, nsp, shard_name);
    INSERT INTO shoal.placement (shard_id, node_id) VALUES (new_shard, node);
    INSERT INTO shoal.ddl_change (table_id, command_tag, operations)
    VALUES (new_table, 'CREATE TABLE', ops);
END
$fn$;

CREATE OR REPLACE FUNCTION shoal.on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    cmd record;
    owner oid;
    tid int;
    touched int[];
BEGIN
    IF NOT shoal.ddl_propagation_on() OR NOT EXISTS (SELECT 1 FROM shoal.colocation_group) THEN
        RETURN;
    END IF;
    touched := coalesce(string_to_array(nullif(current_setting('shoal.ddl_touched', true), ''), ',')::int[], '{}');
    PERFORM set_config('shoal.ddl_touched', '', true);
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        CONTINUE WHEN cmd.in_extension;
        IF cmd.classid = 'pg_catalog.pg_class'::regclass THEN
            owner := cmd.objid;
        ELSIF cmd.classid = 'pg_catalog.pg_constraint'::regclass THEN
            SELECT c.conrelid INTO owner FROM pg_catalog.pg_constraint c WHERE c.oid = cmd.objid;
        ELSE
            CONTINUE;
        END IF;
        CONTINUE WHEN owner IS NULL OR owner = 0;
        IF cmd.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') THEN
            SELECT g.colocation_id INTO tid FROM shoal.colocation_group g
             WHERE g.kind = 'schema' AND g.schema_name = cmd.schema_name;
            IF FOUND AND NOT EXISTS (SELECT 1 FROM shoal.distributed_table t WHERE t.relid = owner)
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = owner AND NOT c.relispartition) THEN
                PERFORM shoal.ddl_place_in_schema(owner, tid);
                CONTINUE;
            END IF;
        END IF;
        tid := shoal.ddl_managed_table(owner);
        IF tid IS NOT NULL AND NOT tid = ANY (touched) THEN
            touched := touched || tid;
        END IF;
    END LOOP;
    FOREACH tid IN ARRAY touched LOOP
        IF EXISTS (SELECT 1 FROM shoal.distributed_table t WHERE t.table_id = tid) THEN
            PERFORM shoal.ddl_reconcile(tid, tg_tag);
        END IF;
    END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION shoal.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    obj record;
    tid int;
    dropped int[] := '{}';
    schemas text[] := '{}';
    touched int[] := '{}';
    owner record;
BEGIN
    IF NOT shoal.ddl_propagation_on() OR NOT EXISTS (SELECT 1 FROM shoal.colocation_group) THEN
        RETURN;
    END IF;
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        IF obj.object_type = 'schema' THEN
            schemas := schemas || obj.object_name;
        END IF;
        CONTINUE WHEN obj.classid <> 'pg_catalog.pg_class'::regclass OR obj.objsubid <> 0;
        SELECT t.table_id INTO tid FROM shoal.distributed_table t WHERE t.relid = obj.objid;
        IF FOUND THEN
            dropped := dropped || tid;
        ELSIF obj.object_type = 'index' THEN
            SELECT t.table_id INTO tid FROM shoal.distributed_table t
             WHERE t.original_ddl->'name'->>'schema' = obj.schema_name
               AND EXISTS (SELECT 1 FROM jsonb_array_elements(t.original_ddl->'indexes') i
                            WHERE i.value->>'name' = obj.object_name);
            IF FOUND THEN
                touched := touched || tid;
            END IF;
        END IF;
    END LOOP;
    -- A shard's partition or foreign table dropped on its own would hide its rows.
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects()
                WHERE classid = 'pg_catalog.pg_class'::regclass AND objsubid = 0
                  AND object_type IN ('table', 'foreign table') LOOP
        SELECT t.relid::regclass::text AS table_name INTO owner
          FROM shoal.shard s JOIN shoal.distributed_table t USING (table_id)
         WHERE t.kind IN ('hash', 'schema') AND s.schema_name = obj.schema_name
           AND obj.object_name IN (s.shard_name, shoal.derived_name(s.shard_name, 'shard'))
           AND NOT t.table_id = ANY (dropped)
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION '%.% is a shard of distributed table %', obj.schema_name, obj.object_name, owner.table_name
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'drop the distributed table itself, or undistribute it (`shoal table undistribute`)';
        END IF;
    END LOOP;
    IF cardinality(dropped) > 0 THEN
        PERFORM shoal.ddl_drop_tables(dropped, schemas);
    END IF;
    IF cardinality(schemas) > 0 THEN
        DELETE FROM shoal.colocation_group g
         WHERE g.schema_name = ANY (schemas)
           AND NOT EXISTS (SELECT 1 FROM shoal.distributed_table d WHERE d.colocation_id = g.colocation_id);
    END IF;
    SELECT coalesce(array_agg(DISTINCT t), '{}') INTO touched FROM unnest(touched) t
     WHERE NOT t = ANY (dropped);
    IF cardinality(touched) > 0 THEN
        PERFORM set_config('shoal.ddl_touched', array_to_string(touched, ','), true);
    END IF;
END
$fn$;

-- A statement's text with its comments, string constants and quoted identifiers blanked out,
-- so keywords can be looked for in it; NULL when it holds more than one statement (then which
-- one is running cannot be told from the text).
CREATE OR REPLACE FUNCTION shoal.ddl_sql_skeleton(query text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    skeleton text;
BEGIN
    skeleton := regexp_replace(query,
        $re$--[^\n]*|/\*.*?\*/|\$([A-Za-z_][A-Za-z_0-9]*)?\$.*?\$\1\$|[EeBbXxUuNn]?'(?:[^']|'')*'|"(?:[^"]|"")*"$re$,
        ' ', 'g');
    skeleton := btrim(skeleton, E' \t\r\n;');
    IF position(';' IN skeleton) > 0 THEN
        RETURN NULL;
    END IF;
    RETURN skeleton;
END
$fn$;

-- Statements PostgreSQL refuses on a distributed table (a partitioned table over foreign
-- tables) with words that do not say what works instead: refused here first, saying it. Only
-- the part a statement's text shows for sure is looked at (a single statement, outside its
-- constants); anything else meets PostgreSQL's own refusal.
CREATE OR REPLACE FUNCTION shoal.on_ddl_command_start() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    query text;
    skeleton text;
    words text[];
    target regclass;
    managed record;
    what text;
BEGIN
    IF tg_tag NOT IN ('CREATE INDEX', 'ALTER TABLE', 'DROP INDEX') OR NOT shoal.ddl_propagation_on()
       OR NOT EXISTS (SELECT 1 FROM shoal.distributed_table t WHERE t.kind IN ('hash', 'schema')) THEN
        RETURN;
    END IF;
    query := current_query();
    IF query !~* '(concurrently|unique|primary|foreign|references|using|constraint|index)' THEN
        RETURN;
    END IF;
    skeleton := shoal.ddl_sql_skeleton(query);
    IF skeleton IS NULL THEN
        RETURN;
    END IF;
    IF tg_tag = 'DROP INDEX' THEN
        words := regexp_match(query,
            '^\s*drop\s+index\s+(?:concurrently\s+)?(?:if\s+exists\s+)?((?:"(?:[^"]|"")+"|[^\s",;.]+)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[^\s",;.]+))?)\s*;?\s*$',
            'i');
        IF words IS NULL THEN
            RETURN;
        END IF;
        IF to_regclass(words[1]) IS NULL THEN
            SELECT t.relid::regclass AS table_name INTO managed
              FROM shoal.distributed_table t
              CROSS JOIN LATERAL jsonb_array_elements(t.original_ddl->'indexes') i
             WHERE (i.value->>'unique')::boolean AND t.kind IN ('hash', 'schema')
               AND i.value->>'name' = (parse_ident(words[1]))[cardinality(parse_ident(words[1]))]
             LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'index % of distributed table % exists on its shards only', words[1], managed.table_name
                    USING ERRCODE = 'feature_not_supported',
                          HINT = 'run the same statement with `shoal ddl`';
            END IF;
        ELSIF skeleton ~* '^\s*drop\s+index\s+concurrently\M' THEN
            SELECT t.relid::regclass AS table_name INTO managed
              FROM pg_catalog.pg_index i JOIN shoal.distributed_table t ON t.relid = i.indrelid
             WHERE i.indexrelid = to_regclass(words[1]) AND t.kind IN ('hash', 'schema');
            IF FOUND THEN
                RAISE EXCEPTION 'cannot drop an index of distributed table % concurrently: PostgreSQL refuses DROP INDEX CONCURRENTLY on partitioned indexes', managed.table_name
                    USING ERRCODE = 'feature_not_supported',
                          HINT = 'run the same statement with `shoal ddl`, which drops it concurrently on every shard; or drop CONCURRENTLY';
            END IF;
        END IF;
        RETURN;
    END IF;
    IF tg_tag = 'CREATE INDEX' THEN
        words := regexp_match(query,
            '^\s*create\s+(unique\s+)?index\s+(concurrently\s+)?(?:if\s+not\s+exists\s+)?(?:(?:"(?:[^"]|"")+"|[^\s"(]+)\s+)?on\s+(?:only\s+)?((?:"(?:[^"]|"")+"|[^\s"(.]+)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[^\s"(.]+))?)',
            'i');
        IF words IS NULL OR (words[1] IS NULL AND words[2] IS NULL) THEN
            RETURN;
        END IF;
        target := to_regclass(words[3]);
        what := CASE WHEN words[2] IS NOT NULL
                     THEN 'create an index concurrently on distributed table %s: PostgreSQL refuses CREATE INDEX CONCURRENTLY on partitioned tables'
                     ELSE 'create a unique index on distributed table %s here: its unique indexes live on its shards, which PostgreSQL cannot reach from a partitioned table over foreign tables' END;
    ELSE
        words := regexp_match(query,
            '^\s*alter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?((?:"(?:[^"]|"")+"|[^\s"(.]+)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[^\s"(.]+))?)',
            'i');
        IF words IS NULL THEN
            RETURN;
        END IF;
        target := to_regclass(words[1]);
        IF skeleton ~* '\m(primary\s+key|unique|foreign\s+key|references|exclude)\M' THEN
            what := 'add a unique constraint, primary key or foreign key to distributed table %s here: they live on its shards, which PostgreSQL cannot reach from a partitioned table over foreign tables';
        ELSIF skeleton ~* '\mtype\M.*\musing\M' THEN
            what := 'change a column type with USING on distributed table %s here: PostgreSQL refuses USING over foreign tables';
        ELSIF skeleton ~* '\m(drop|validate)\s+constraint\M' AND target IS NOT NULL AND EXISTS (
                SELECT 1 FROM shoal.distributed_table t
                 CROSS JOIN LATERAL jsonb_array_elements(t.original_ddl->'constraints') c
                 WHERE t.relid = target AND c.value->>'kind' <> 'Check'
                   AND query ~* ('(drop|validate)\s+constraint\s+(if\s+exists\s+)?"?' || regexp_replace(c.value->>'name', '([^A-Za-z0-9_])', '\\\1', 'g') || '"?\M')) THEN
            what := 'drop or validate that constraint of distributed table %s here: it lives on its shards only';
        ELSE
            RETURN;
        END IF;
    END IF;
    IF target IS NOT NULL AND EXISTS (SELECT 1 FROM shoal.distributed_table t
                                       WHERE t.relid = target AND t.kind IN ('hash', 'schema')) THEN
        RAISE EXCEPTION 'cannot %', format(what, target)
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'run the same statement with `shoal ddl`, which carries it out on every shard'
                         || CASE WHEN tg_tag = 'CREATE INDEX' AND words[2] IS NOT NULL
                                 THEN ' without blocking writes; or drop CONCURRENTLY to build it inside the statement'
                                 ELSE '' END;
    END IF;
END
$fn$;

-- Records of tables distributed before DDL propagation get what it needs: the coordinator's
-- attribute number of every column, and their plain indexes on the coordinator too (where
-- DROP INDEX and ALTER INDEX find them). Records whose coordinator table is gone (dropped
-- before DDL propagation, which left their shards behind) become cleanup records.
CREATE OR REPLACE FUNCTION shoal.ddl_upgrade_records() RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    entry record;
    current jsonb;
    ix jsonb;
    operation bigint;
BEGIN
    FOR entry IN SELECT t.* FROM shoal.distributed_table t
                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.relid) LOOP
        operation := coalesce(operation, nextval('shoal.operation_id_seq'));
        INSERT INTO shoal.cleanup_record (operation_id, object_type, schema_name, object_name, node_id, policy)
        SELECT operation, 'shard_table', s.schema_name, s.shard_name, p.node_id, 'always'
          FROM shoal.shard s JOIN shoal.placement p USING (shard_id)
         WHERE s.table_id = entry.table_id AND entry.kind <> 'reference';
        DELETE FROM shoal.distributed_table t WHERE t.table_id = entry.table_id;
    END LOOP;
    FOR entry IN SELECT t.* FROM shoal.distributed_table t
                  WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(t.original_ddl->'columns') c
                                 WHERE jsonb_typeof(c.value->'attnum') IS DISTINCT FROM 'number') LOOP
        current := shoal.describe_table(entry.relid);
        UPDATE shoal.distributed_table t
           SET original_ddl = jsonb_set(t.original_ddl, '{columns}', (
               SELECT coalesce(jsonb_agg(r.value || coalesce((
                          SELECT jsonb_build_object('attnum', c.value->'attnum')
                            FROM jsonb_array_elements(current->'columns') c
                           WHERE c.value->>'name' = r.value->>'name'), '{}') ORDER BY r.ordinality), '[]')
                 FROM jsonb_array_elements(t.original_ddl->'columns') WITH ORDINALITY r))
         WHERE t.table_id = entry.table_id;
        IF entry.kind IN ('hash', 'schema') THEN
            FOR ix IN SELECT value FROM jsonb_array_elements(entry.original_ddl->'indexes')
                       WHERE NOT (value->>'unique')::boolean LOOP
                IF to_regclass(format('%I.%I', current->'name'->>'schema', ix->>'name')) IS NULL THEN
                    EXECUTE format('CREATE INDEX %I ON %s USING %s', ix->>'name',
                                   entry.relid::regclass, ix->>'method_and_keys');
                END IF;
            END LOOP;
        END IF;
    END LOOP;
END
$fn$;
