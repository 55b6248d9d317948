use super::*;
use crate::definition::{ColumnDef, ConstraintDef, IndexDef, ReplicaIdentity};

fn column(name: &str) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        type_sql: "bigint".into(),
        not_null: false,
        collation_sql: None,
        default_sql: None,
        identity: false,
        generated: false,
        attnum: None,
    }
}

fn hash_table(table_id: i32, name: &str, colocation_id: i32) -> Managed {
    Managed {
        table_id,
        relid: 1000 + table_id as u32,
        kind: TableKind::Hash,
        colocation_id,
        name: QualifiedName::new("public", name),
        distribution_column: Some("id".into()),
        record: TableDef {
            relid: 1,
            name: QualifiedName::new("public", name),
            relkind: "r".into(),
            columns: vec![column("id"), column("k")],
            constraints: vec![ConstraintDef {
                name: format!("{name}_pkey"),
                kind: ConstraintKind::PrimaryKey,
                columns: vec!["id".into()],
                definition: "PRIMARY KEY (id)".into(),
                foreign_key: None,
            }],
            indexes: vec![IndexDef {
                name: format!("{name}_k_uniq"),
                unique: true,
                key_columns: vec!["id".into(), "k".into()],
                method_and_keys: "btree (id, k)".into(),
            }],
            replica_identity: ReplicaIdentity::Default,
        },
        shards: (0..2)
            .map(|i| Shard {
                shard_id: 100 * table_id as i64 + i as i64,
                index: i,
                table: QualifiedName::new("public", format!("{name}_{}", 100 * table_id + i)),
                node_id: i + 1,
            })
            .collect(),
    }
}

fn reference(name: &str) -> Managed {
    Managed {
        kind: TableKind::Reference,
        shards: Vec::new(),
        distribution_column: None,
        ..hash_table(9, name, 99)
    }
}

fn one(sql: &str) -> NodeEnum {
    let mut parsed = parse(sql).unwrap();
    assert_eq!(parsed.len(), 1);
    parsed.remove(0).node
}

fn shard_sql(route: Route) -> Vec<String> {
    match route {
        Route::Shards(work) | Route::Concurrently(work) => {
            work.statements.into_iter().map(|(_, s)| s).collect()
        }
        Route::Retype(retype) => retype.statements.into_iter().map(|(_, s)| s).collect(),
        Route::Coordinator => panic!("expected shard statements"),
    }
}

#[test]
fn a_script_splits_into_its_statements() {
    let parsed =
        parse("ALTER TABLE t ADD COLUMN a int; CREATE INDEX ON t (a);\n-- done\n").unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].text, "ALTER TABLE t ADD COLUMN a int");
    assert_eq!(parsed[1].text, "CREATE INDEX ON t (a)");
    assert!(parse("ALTER TABLE").is_err());
}

#[test]
fn what_the_coordinator_takes_goes_there() {
    let t = hash_table(1, "t", 1);
    for sql in [
        "ALTER TABLE t ADD COLUMN a int",
        "ALTER TABLE t ADD CONSTRAINT c CHECK (k > 0)",
        "CREATE INDEX ON t (k)",
        "COMMENT ON TABLE t IS 'x'",
    ] {
        assert_eq!(
            route(&one(sql), Some(&t), None, &[]).unwrap(),
            Route::Coordinator,
            "{sql}"
        );
    }
    // A reference table is a real table on the coordinator: everything goes there.
    let r = reference("r");
    let unique = one("ALTER TABLE r ADD UNIQUE (k)");
    assert_eq!(
        route(&unique, Some(&r), None, &[]).unwrap(),
        Route::Coordinator
    );
}

#[test]
fn a_primary_key_goes_to_every_shard_under_its_shard_name() {
    let mut t = hash_table(1, "t", 1);
    t.record.constraints.clear();
    let node = one("ALTER TABLE t ADD PRIMARY KEY (id) INCLUDE (k)");
    let Route::Shards(work) = route(&node, Some(&t), None, &[]).unwrap() else {
        panic!("a shard-only change")
    };
    assert_eq!(
        work.statements
            .iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>(),
        [
            "ALTER TABLE public.t_100 ADD CONSTRAINT t_pkey_100 PRIMARY KEY (id) INCLUDE (k)",
            "ALTER TABLE public.t_101 ADD CONSTRAINT t_pkey_101 PRIMARY KEY (id) INCLUDE (k)",
        ]
    );
    assert_eq!(
        work.change,
        RecordChange::AddConstraint {
            name: "t_pkey".into(),
            referenced: None
        }
    );
    assert_eq!(
        work.coordinator_before,
        [r#"ALTER TABLE "public"."t" ALTER COLUMN "id" SET NOT NULL"#]
    );
}

#[test]
fn unique_keys_must_include_the_distribution_column() {
    let t = hash_table(1, "t", 1);
    let refused = route(&one("ALTER TABLE t ADD UNIQUE (k)"), Some(&t), None, &[]).unwrap_err();
    assert!(
        refused.0.contains("distribution column \"id\""),
        "{refused:?}"
    );
    let refused = route(&one("CREATE UNIQUE INDEX ON t (k)"), Some(&t), None, &[]).unwrap_err();
    assert!(refused.0.contains("distribution column"), "{refused:?}");
    let named = shard_sql(
        route(
            &one("ALTER TABLE t ADD UNIQUE (k, id)"),
            Some(&t),
            None,
            &[],
        )
        .unwrap(),
    );
    assert_eq!(
        named[0],
        "ALTER TABLE public.t_100 ADD CONSTRAINT t_k_id_key_100 UNIQUE (k, id)"
    );
}

#[test]
fn foreign_keys_point_at_the_colocated_shard_or_the_reference_table() {
    let t = hash_table(1, "t", 1);
    let u = hash_table(2, "u", 1);
    let to_u = shard_sql(
        route(
            &one("ALTER TABLE t ADD FOREIGN KEY (id) REFERENCES u ON DELETE CASCADE NOT VALID"),
            Some(&t),
            Some(&u),
            &[],
        )
        .unwrap(),
    );
    assert_eq!(
        to_u,
        [
            "ALTER TABLE public.t_100 ADD CONSTRAINT t_id_fkey_100 FOREIGN KEY (id) REFERENCES public.u_200 (id) ON DELETE CASCADE NOT VALID",
            "ALTER TABLE public.t_101 ADD CONSTRAINT t_id_fkey_101 FOREIGN KEY (id) REFERENCES public.u_201 (id) ON DELETE CASCADE NOT VALID",
        ]
    );
    let r = reference("r");
    let to_r = shard_sql(
        route(
            &one("ALTER TABLE t ADD CONSTRAINT k_kind FOREIGN KEY (k) REFERENCES r (id)"),
            Some(&t),
            Some(&r),
            &[],
        )
        .unwrap(),
    );
    assert_eq!(
        to_r[1],
        "ALTER TABLE public.t_101 ADD CONSTRAINT k_kind_101 FOREIGN KEY (k) REFERENCES public.r (id)"
    );
    // Not through the distribution column, or to another colocation group: refused.
    let refused = route(
        &one("ALTER TABLE t ADD FOREIGN KEY (k) REFERENCES u (id)"),
        Some(&t),
        Some(&u),
        &[],
    )
    .unwrap_err();
    assert!(refused.0.contains("not colocated"), "{refused:?}");
    let elsewhere = hash_table(3, "w", 2);
    assert!(route(
        &one("ALTER TABLE t ADD FOREIGN KEY (id) REFERENCES w (id)"),
        Some(&t),
        Some(&elsewhere),
        &[],
    )
    .is_err());
    assert!(route(
        &one("ALTER TABLE t ADD FOREIGN KEY (id) REFERENCES plain (id)"),
        Some(&t),
        None,
        &[],
    )
    .unwrap_err()
    .0
    .contains("shoal table reference"));
}

#[test]
fn shard_only_constraints_are_dropped_and_validated_on_the_shards() {
    let t = hash_table(1, "t", 1);
    let drop = route(
        &one("ALTER TABLE t DROP CONSTRAINT t_pkey"),
        Some(&t),
        None,
        &[],
    )
    .unwrap();
    let Route::Shards(work) = drop else { panic!() };
    assert_eq!(
        work.statements[0].1,
        "ALTER TABLE public.t_100 DROP CONSTRAINT t_pkey_100"
    );
    assert_eq!(
        work.change,
        RecordChange::DropConstraints(vec!["t_pkey".into()])
    );
    // A check constraint is the coordinator's.
    let check = one("ALTER TABLE t DROP CONSTRAINT some_check");
    assert_eq!(
        route(&check, Some(&t), None, &[]).unwrap(),
        Route::Coordinator
    );
    let cascade = one("ALTER TABLE t DROP CONSTRAINT t_pkey CASCADE");
    assert!(route(&cascade, Some(&t), None, &[]).is_err());
    let mixed = one("ALTER TABLE t ADD COLUMN z int, ADD PRIMARY KEY (id)");
    assert!(route(&mixed, Some(&t), None, &[])
        .unwrap_err()
        .0
        .contains("split"));
}

#[test]
fn indexes_concurrently_are_built_per_shard_then_made_on_the_coordinator() {
    let t = hash_table(1, "t", 1);
    let Route::Concurrently(work) = route(
        &one("CREATE INDEX CONCURRENTLY ON t (lower(k::text)) WHERE k > 0"),
        Some(&t),
        None,
        &[],
    )
    .unwrap() else {
        panic!("concurrently")
    };
    assert_eq!(
        work.statements[0].1,
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_expr_idx_100 ON public.t_100 USING btree (lower(k::text)) WHERE k > 0"
    );
    assert_eq!(
        work.coordinator_after.as_deref(),
        Some("CREATE INDEX t_expr_idx ON t USING btree (lower(k::text)) WHERE k > 0")
    );
    assert_eq!(
        work.undo[1].1,
        "DROP INDEX CONCURRENTLY IF EXISTS \"public\".\"t_expr_idx_101\""
    );
    let unique = route(
        &one("CREATE UNIQUE INDEX one_k ON t (k, id)"),
        Some(&t),
        None,
        &[],
    )
    .unwrap();
    let Route::Shards(work) = unique else {
        panic!()
    };
    assert_eq!(
        work.statements[0].1,
        "CREATE UNIQUE INDEX one_k_100 ON public.t_100 USING btree (k, id)"
    );
    assert_eq!(work.change, RecordChange::AddIndex("one_k".into()));
}

#[test]
fn dropping_a_shard_only_index_or_concurrently_goes_to_the_shards() {
    let t = hash_table(1, "t", 1);
    let unique = [(t.clone(), "t_k_uniq".to_string())];
    let Route::Shards(work) = route(&one("DROP INDEX t_k_uniq"), None, None, &unique).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        work.statements[1].1,
        "DROP INDEX IF EXISTS \"public\".\"t_k_uniq_101\""
    );
    assert_eq!(
        work.change,
        RecordChange::DropIndexes(vec!["t_k_uniq".into()])
    );
    let mut plain_table = t.clone();
    plain_table.record.indexes[0].unique = false;
    let plain = [(plain_table, "t_k_uniq".to_string())];
    assert_eq!(
        route(&one("DROP INDEX t_k_uniq"), None, None, &plain).unwrap(),
        Route::Coordinator
    );
    let Route::Concurrently(work) =
        route(&one("DROP INDEX CONCURRENTLY t_k_uniq"), None, None, &plain).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        work.coordinator_after.as_deref(),
        Some("DROP INDEX \"public\".\"t_k_uniq\"")
    );
    assert_eq!(work.change, RecordChange::ByCoordinator);
    assert_eq!(
        route(&one("DROP INDEX elsewhere"), None, None, &[]).unwrap(),
        Route::Coordinator
    );
}

#[test]
fn a_type_change_with_using_converts_the_shards_rows_with_the_expression() {
    let t = hash_table(1, "t", 1);
    let Route::Retype(retype) = route(
        &one("ALTER TABLE t ALTER COLUMN k TYPE integer USING (k * 10)::integer"),
        Some(&t),
        None,
        &[],
    )
    .unwrap() else {
        panic!("a retype")
    };
    assert_eq!(retype.column, "k");
    assert_eq!(
        retype.statements[1].1,
        "ALTER TABLE public.t_101 ALTER COLUMN k TYPE int USING (k * 10)::int"
    );
    let key = one("ALTER TABLE t ALTER COLUMN id TYPE text USING id::text");
    assert!(route(&key, Some(&t), None, &[])
        .unwrap_err()
        .0
        .contains("distribution column"));
    let mixed = one("ALTER TABLE t ALTER COLUMN k TYPE int USING k::int, ADD COLUMN z int");
    assert!(route(&mixed, Some(&t), None, &[]).is_err());
}

#[test]
fn what_a_statement_changes_is_read_from_its_parse_tree() {
    let renamed = changes(&one("ALTER TABLE s.t RENAME COLUMN a TO b"));
    assert_eq!(
        renamed.relations,
        [NamedRelation {
            schema: Some("s".into()),
            name: "t".into()
        }]
    );
    let dropped = changes(&one("DROP TABLE a, \"B c\""));
    assert_eq!(dropped.dropped_tables.len(), 2);
    assert_eq!(dropped.dropped_tables[1].name, "B c");
    assert_eq!(
        changes(&one("DROP SCHEMA acme CASCADE")).dropped_schemas,
        ["acme"]
    );
    let created = changes(&one("CREATE TABLE acme.x AS SELECT 1 AS a"));
    assert_eq!(
        created.created_table.unwrap().schema.as_deref(),
        Some("acme")
    );
    assert_eq!(changes(&one("DROP INDEX i")).relations[0].name, "i");
}
