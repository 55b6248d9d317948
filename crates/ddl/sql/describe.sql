-- Table definitions as JSON, read from the catalogs: the one reader of what a table is made of,
-- installed in schema `shoal` on the coordinator and `shoal_worker` on every node (the
-- installer substitutes @schema@). The JSON is what `shoal_cluster::definition::TableDef`
-- deserialises, and what the catalog records as a distributed table's shard definition.
--
-- Every function runs with an empty search path, so every name PostgreSQL prints back is
-- schema-qualified.

-- `base_suffix`, or, when that would not fit in an identifier (63 bytes), the base cut at a
-- character boundary with a hash of the whole base inserted, so distinct bases stay distinct.
-- The same function as `shoal_sql::derived_name` (FNV-1a over the UTF-8 bytes); a test compares
-- the two.
CREATE OR REPLACE FUNCTION @schema@.derived_name(base text, suffix text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = '' AS $fn$
DECLARE
    plain text := base || '_' || suffix;
    bytes bytea;
    hash numeric := 14695981039346656037;
    low int;
    budget int;
    cut text := '';
    ch text;
BEGIN
    IF octet_length(plain) <= 63 THEN
        RETURN plain;
    END IF;
    bytes := convert_to(base, 'UTF8');
    FOR i IN 0 .. length(bytes) - 1 LOOP
        -- XOR touches the low byte only; then multiply by the FNV prime modulo 2^64.
        low := (hash % 256)::int;
        hash := hash - low + (low # get_byte(bytes, i));
        hash := (hash * 1099511628211) % 18446744073709551616;
    END LOOP;
    budget := least(63 - octet_length(suffix) - 10, octet_length(base));
    FOREACH ch IN ARRAY regexp_split_to_array(base, '') LOOP
        EXIT WHEN octet_length(cut) + octet_length(ch) > budget;
        cut := cut || ch;
    END LOOP;
    RETURN cut || '_' || lpad(to_hex((hash % 4294967296)::bigint), 8, '0') || '_' || suffix;
END
$fn$;

-- What follows `USING ` in `pg_get_indexdef`: method, keys, INCLUDE, WITH, WHERE; NULL unless
-- the text before it is exactly the index and table names PostgreSQL printed.
CREATE OR REPLACE FUNCTION @schema@.index_method_and_keys(
    definition text, index_name text, is_unique boolean, printed_table text
) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $fn$
DECLARE
    prefix text := CASE WHEN is_unique THEN 'CREATE UNIQUE INDEX ' ELSE 'CREATE INDEX ' END
                   || quote_ident(index_name) || ' ON ';
    rest text;
BEGIN
    IF left(definition, length(prefix)) <> prefix THEN
        RETURN NULL;
    END IF;
    rest := substr(definition, length(prefix) + 1);
    IF left(rest, 5) = 'ONLY ' THEN
        rest := substr(rest, 6);
    END IF;
    IF left(rest, length(printed_table) + 7) <> printed_table || ' USING ' THEN
        RETURN NULL;
    END IF;
    RETURN substr(rest, length(printed_table) + 8);
END
$fn$;

-- The referential actions of a foreign key definition: everything after `REFERENCES t(cols)`
-- but NOT VALID.
-- Quoted column names may contain `)`, so the walk honours double quotes.
CREATE OR REPLACE FUNCTION @schema@.foreign_key_actions(definition text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $fn$
DECLARE
    start int := position(' REFERENCES ' IN definition);
    in_quotes boolean := false;
    seen_open boolean := false;
    ch text;
BEGIN
    IF start = 0 THEN
        RETURN '';
    END IF;
    FOR i IN start .. length(definition) LOOP
        ch := substr(definition, i, 1);
        IF ch = '"' THEN
            in_quotes := NOT in_quotes;
        ELSIF ch = '(' AND NOT in_quotes THEN
            seen_open := true;
        ELSIF ch = ')' AND NOT in_quotes AND seen_open THEN
            -- NOT VALID is the constraint's state, not one of its actions.
            RETURN regexp_replace(btrim(substr(definition, i + 1)), '\s*NOT VALID$', '');
        END IF;
    END LOOP;
    RETURN '';
END
$fn$;

-- Columns (with their attribute numbers), constraints (not null ones aside), indexes not
-- created by a constraint, and the replica identity of a table.
CREATE OR REPLACE FUNCTION @schema@.describe_table(rel oid) RETURNS jsonb
LANGUAGE plpgsql STABLE STRICT SET search_path = '' AS $fn$
DECLARE
    head record;
    printed_table text;
    table_columns jsonb;
    table_constraints jsonb;
    table_indexes jsonb := '[]';
    replica_index text;
    ix record;
    method_and_keys text;
    identity jsonb;
BEGIN
    SELECT n.nspname::text AS schema_name, c.relname::text AS table_name,
           c.relkind::text AS relkind, c.relreplident::text AS replident
      INTO head
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation % does not exist', rel;
    END IF;
    printed_table := quote_ident(head.schema_name) || '.' || quote_ident(head.table_name);

    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'name', a.attname::text,
               'type_sql', pg_catalog.format_type(a.atttypid, a.atttypmod),
               'not_null', a.attnotnull,
               'collation_sql',
                   CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN
                       (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                          FROM pg_catalog.pg_collation co
                          JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                         WHERE co.oid = a.attcollation)
                   END,
               'default_sql', pg_catalog.pg_get_expr(d.adbin, d.adrelid),
               'identity', a.attidentity <> '',
               'generated', a.attgenerated <> '',
               'attnum', a.attnum)
               ORDER BY a.attnum), '[]')
      INTO table_columns
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'name', con.conname::text,
               'kind', CASE con.contype WHEN 'p' THEN 'PrimaryKey' WHEN 'u' THEN 'Unique'
                                        WHEN 'c' THEN 'Check' WHEN 'f' THEN 'ForeignKey'
                                        ELSE 'Exclusion' END,
               'columns', to_jsonb(keys.names),
               'definition', pg_catalog.pg_get_constraintdef(con.oid),
               'foreign_key',
                   CASE WHEN con.contype = 'f' THEN jsonb_build_object(
                       'columns', to_jsonb(keys.names),
                       'referenced_relid', con.confrelid::bigint,
                       'referenced', jsonb_build_object('schema', rn.nspname::text,
                                                        'name', rc.relname::text),
                       'referenced_columns', to_jsonb(ARRAY(
                           SELECT a.attname::text
                             FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                             JOIN pg_catalog.pg_attribute a
                               ON a.attrelid = con.confrelid AND a.attnum = k.n
                            ORDER BY k.o)),
                       'actions_sql', @schema@.foreign_key_actions(
                           pg_catalog.pg_get_constraintdef(con.oid)))
                   END)
               ORDER BY con.contype DESC, con.conname), '[]')
      INTO table_constraints
      FROM pg_catalog.pg_constraint con
      CROSS JOIN LATERAL (SELECT ARRAY(
               SELECT a.attname::text
                 FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n
                ORDER BY k.o) AS names) keys
      LEFT JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
      LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
     WHERE con.conrelid = rel AND con.contype IN ('p', 'u', 'c', 'f', 'x');

    FOR ix IN
        SELECT ic.relname::text AS index_name, i.indisunique AS is_unique,
               pg_catalog.pg_get_indexdef(i.indexrelid) AS definition,
               i.indisreplident AS is_replica_identity,
               EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c
                        WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid) AS of_constraint,
               ARRAY(SELECT a.attname::text
                       FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                      ORDER BY k.o) AS key_columns
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = rel
         ORDER BY ic.relname
    LOOP
        IF ix.is_replica_identity THEN
            replica_index := ix.index_name;
        END IF;
        CONTINUE WHEN ix.of_constraint;
        method_and_keys := @schema@.index_method_and_keys(
            ix.definition, ix.index_name, ix.is_unique, printed_table);
        IF method_and_keys IS NULL THEN
            RAISE EXCEPTION 'cannot read the definition of index % (%)', ix.index_name, ix.definition
                USING HINT = 'drop the index and create it again';
        END IF;
        table_indexes := table_indexes || jsonb_build_array(jsonb_build_object(
            'name', ix.index_name,
            'unique', ix.is_unique,
            'key_columns', to_jsonb(ix.key_columns),
            'method_and_keys', method_and_keys));
    END LOOP;

    identity := CASE head.replident
        WHEN 'n' THEN '"Nothing"'::jsonb
        WHEN 'f' THEN '"Full"'::jsonb
        WHEN 'i' THEN CASE WHEN replica_index IS NULL THEN '"Default"'::jsonb
                           ELSE jsonb_build_object('Index', replica_index) END
        ELSE '"Default"'::jsonb
    END;
    RETURN jsonb_build_object(
        'relid', rel::bigint,
        'name', jsonb_build_object('schema', head.schema_name, 'name', head.table_name),
        'relkind', head.relkind,
        'columns', table_columns,
        'constraints', table_constraints,
        'indexes', table_indexes,
        'replica_identity', identity);
END
$fn$;
