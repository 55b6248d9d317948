//! Where a stream table's rows live. Refreshes maintain a *storage table* of Shoal's own,
//! `shoal.stream_<id>` (one row per distinct result row or group, with the hidden bookkeeping
//! columns), and the name users query is a view over it that shows exactly the query's result:
//! the visible columns, each stored row repeated by its multiplicity where the query keeps
//! duplicates ([`contents_sql`]).
//!
//! Why Shoal's schema and a name from the catalog id: the storage is out of users' sight and
//! reach (no one but its owner may read or write it), its name never collides with a user's
//! relation or needs quoting, it stays put when the view is renamed or moved, and a table
//! created there is never placed as a shard of a distributed schema.

use crate::error::Unsupported;
use crate::plan::{ColumnRole, Maintenance, OutputColumn, QueryPlan};
use crate::refresh::{contents_sql, storage_columns, COUNT_COLUMN};
use shoal_sql::{derived_name, quote_ident, QualifiedName};

/// The schema of the storage tables: Shoal's catalog schema.
pub const STORAGE_SCHEMA: &str = "shoal";

/// The storage table of stream table `stream_id`.
pub fn storage_table(stream_id: i32) -> QualifiedName {
    QualifiedName::new(STORAGE_SCHEMA, format!("stream_{stream_id}"))
}

/// The name of the index refreshes look rows up by, on a table named `table` (as
/// [`crate::storage_ddl`] names it).
pub fn key_index(table: &str) -> String {
    derived_name(table, "shoal_key")
}

/// The view users query, over the storage table.
pub fn view_ddl(plan: &QueryPlan, view: &QualifiedName, storage: &QualifiedName) -> String {
    format!(
        "CREATE VIEW {} AS {}",
        view.quoted(),
        contents_sql(plan, storage)
    )
}

/// The plan refreshes of a stream table follow, given its storage's columns (`stored`) and
/// whether it refreshes in full: the query's own, unless the storage was made when the query
/// could only be refreshed in full (as queries with USING or HAVING once were). Such a storage
/// holds the visible columns and a multiplicity per distinct result row, its view repeats each
/// row by it, and it must go on being refreshed that way: as full-only. It is told by its
/// columns, except for an aggregate without GROUP BY of only count/min/max, whose storage looks
/// alike either way; refreshed in full, that one is taken as full-only too, which gives the
/// same rows for a storage made differential (its single row is shown as stored).
pub fn plan_for_storage(plan: QueryPlan, stored: &[String], refreshes_in_full: bool) -> QueryPlan {
    if plan.differential().is_none() || stored.is_empty() {
        return plan;
    }
    let mut full_only = plan.column_names();
    full_only.push(COUNT_COLUMN.to_string());
    let fits = storage_columns(&plan) == stored;
    if fits && !(refreshes_in_full && stored == full_only.as_slice()) {
        return plan;
    }
    if stored != full_only.as_slice() {
        // Not a layout of either kind: refreshes will fail and say so; nothing to adapt.
        return plan;
    }
    let reason = Unsupported::new("stream tables stored for full refresh only", None).hint(
        "the stream table was created when its query could only be refreshed in full; \
         drop it and create it again to refresh it differentially",
    );
    QueryPlan {
        columns: plan
            .columns
            .into_iter()
            .map(|c| OutputColumn {
                role: ColumnRole::Plain,
                ..c
            })
            .collect(),
        maintenance: Maintenance::FullOnly(reason),
        ..plan
    }
}

/// Who may read a stream table of the old layout, and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTable {
    /// The stream table: a table at the name users query, holding the stored rows.
    pub name: QualifiedName,
    pub owner: String,
    /// Roles granted SELECT on it other than its owner; `None` is PUBLIC.
    pub readers: Vec<Option<String>>,
}

/// Turns a stream table of the layout before storage tables (the stored rows in a table at the
/// user's name) into a storage table and a view, keeping its rows, index and refresh state:
/// the table is moved and renamed (through a reserved interim name, so that neither the user's
/// schema nor Shoal's has to lack a relation named like it), the view takes its name, its
/// readers and its owner, and the readers lose their direct access to the stored rows.
pub fn upgrade_sql(plan: &QueryPlan, stream_id: i32, old: &OldTable) -> Vec<String> {
    let storage = storage_table(stream_id);
    let interim = format!("__shoal_stream_{stream_id}");
    let in_user_schema = |name: &str| QualifiedName::new(&old.name.schema, name).quoted();
    let in_storage_schema = |name: &str| QualifiedName::new(STORAGE_SCHEMA, name).quoted();
    let mut stmts = vec![
        format!(
            "ALTER TABLE {} RENAME TO {}",
            old.name.quoted(),
            quote_ident(&interim)
        ),
        format!(
            "ALTER INDEX IF EXISTS {} RENAME TO {}",
            in_user_schema(&key_index(&old.name.name)),
            quote_ident(&key_index(&interim))
        ),
        format!(
            "ALTER TABLE {} SET SCHEMA {}",
            in_user_schema(&interim),
            quote_ident(STORAGE_SCHEMA)
        ),
        format!(
            "ALTER TABLE {} RENAME TO {}",
            in_storage_schema(&interim),
            quote_ident(&storage.name)
        ),
        format!(
            "ALTER INDEX IF EXISTS {} RENAME TO {}",
            in_storage_schema(&key_index(&interim)),
            quote_ident(&key_index(&storage.name))
        ),
        view_ddl(plan, &old.name, &storage),
    ];
    for reader in &old.readers {
        let role = reader.as_deref().map_or("PUBLIC".to_string(), quote_ident);
        stmts.push(format!("GRANT SELECT ON {} TO {role}", old.name.quoted()));
        stmts.push(format!("REVOKE ALL ON {} FROM {role}", storage.quoted()));
    }
    // Last: a grant made before the change of owner is rewritten as the new owner's.
    stmts.push(format!(
        "ALTER VIEW {} OWNER TO {}",
        old.name.quoted(),
        quote_ident(&old.owner)
    ));
    stmts
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_storage_made_for_full_refresh_only_keeps_being_refreshed_so() {
        use crate::storage_columns;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Once full-only: visible columns and the multiplicity.
        let p = analyze("SELECT i, count(*) AS n FROM a GROUP BY i HAVING count(*) > 1").unwrap();
        let old = names(&["i", "n", "__shoal_count"]);
        for in_full in [true, false] {
            let fitted = plan_for_storage(p.clone(), &old, in_full);
            let Maintenance::FullOnly(u) = &fitted.maintenance else {
                panic!("{fitted:?}");
            };
            assert!(u.to_string().contains("drop it and create it again"));
            assert!(fitted.columns.iter().all(|c| c.role == ColumnRole::Plain));
            assert!(contents_sql(&fitted, &storage_table(1)).contains("generate_series"));
        }
        // Made for the plan: kept.
        let made = storage_columns(&p);
        assert_eq!(plan_for_storage(p.clone(), &made, true), p);
        // A global count alike either way: full-only when refreshed in full.
        let g = analyze("SELECT count(*) AS n FROM a JOIN b USING (i)").unwrap();
        assert_eq!(storage_columns(&g), names(&["n", "__shoal_count"]));
        assert_eq!(plan_for_storage(g.clone(), &storage_columns(&g), false), g);
        assert!(plan_for_storage(g.clone(), &storage_columns(&g), true)
            .differential()
            .is_none());
    }

    use super::*;
    use crate::analyze;

    fn awkward() -> QualifiedName {
        QualifiedName::new("my app", "Order \"Items\"")
    }

    #[test]
    fn storage_is_named_after_the_catalog_id_in_shoals_schema() {
        assert_eq!(storage_table(7).quoted(), r#""shoal"."stream_7""#);
        assert_eq!(key_index("stream_7"), "stream_7_shoal_key");
    }

    #[test]
    fn a_query_keeping_duplicates_is_shown_with_each_row_repeated() {
        let plan = analyze("SELECT a.i, a.j, b.k FROM a JOIN b ON b.i = a.i").unwrap();
        assert_eq!(
            view_ddl(&plan, &awkward(), &storage_table(7)),
            r#"CREATE VIEW "my app"."Order ""Items""" AS SELECT "__shoal_t"."i", "__shoal_t"."j", "__shoal_t"."k" FROM "shoal"."stream_7" AS "__shoal_t" CROSS JOIN LATERAL generate_series(1, "__shoal_t"."__shoal_count") AS "__shoal_i""#
        );
        // Queries only full refreshes maintain are stored grouped by every column, so they are
        // shown repeated too, whatever their shape.
        let plan =
            analyze("SELECT i, count(*) AS n FROM a JOIN b USING (i) GROUP BY ROLLUP (i)").unwrap();
        assert!(view_ddl(&plan, &awkward(), &storage_table(7)).contains("generate_series"));
    }

    #[test]
    fn grouped_and_distinct_queries_are_shown_as_stored() {
        let plan = analyze(
            "SELECT a.i, count(*) AS n, sum(b.k) AS total FROM a JOIN b ON b.i = a.i GROUP BY a.i",
        )
        .unwrap();
        assert_eq!(
            view_ddl(&plan, &awkward(), &storage_table(3)),
            r#"CREATE VIEW "my app"."Order ""Items""" AS SELECT "__shoal_t"."i", "__shoal_t"."n", "__shoal_t"."total" FROM "shoal"."stream_3" AS "__shoal_t""#
        );
        let plan = analyze("SELECT DISTINCT a.j, b.k FROM a JOIN b ON b.i = a.i").unwrap();
        assert_eq!(
            view_ddl(&plan, &awkward(), &storage_table(3)),
            r#"CREATE VIEW "my app"."Order ""Items""" AS SELECT "__shoal_t"."j", "__shoal_t"."k" FROM "shoal"."stream_3" AS "__shoal_t""#
        );
    }

    #[test]
    fn an_old_stream_table_becomes_storage_and_a_view_with_its_readers_and_owner() {
        let plan = analyze("SELECT DISTINCT a.j FROM a").unwrap();
        let old = OldTable {
            name: awkward(),
            owner: "app owner".into(),
            readers: vec![Some("reader".into()), None],
        };
        let stmts = upgrade_sql(&plan, 12, &old);
        assert_eq!(
            stmts,
            vec![
                r#"ALTER TABLE "my app"."Order ""Items""" RENAME TO "__shoal_stream_12""#,
                r#"ALTER INDEX IF EXISTS "my app"."Order ""Items""_shoal_key" RENAME TO "__shoal_stream_12_shoal_key""#,
                r#"ALTER TABLE "my app"."__shoal_stream_12" SET SCHEMA "shoal""#,
                r#"ALTER TABLE "shoal"."__shoal_stream_12" RENAME TO "stream_12""#,
                r#"ALTER INDEX IF EXISTS "shoal"."__shoal_stream_12_shoal_key" RENAME TO "stream_12_shoal_key""#,
                r#"CREATE VIEW "my app"."Order ""Items""" AS SELECT "__shoal_t"."j" FROM "shoal"."stream_12" AS "__shoal_t""#,
                r#"GRANT SELECT ON "my app"."Order ""Items""" TO "reader""#,
                r#"REVOKE ALL ON "shoal"."stream_12" FROM "reader""#,
                r#"GRANT SELECT ON "my app"."Order ""Items""" TO PUBLIC"#,
                r#"REVOKE ALL ON "shoal"."stream_12" FROM PUBLIC"#,
                r#"ALTER VIEW "my app"."Order ""Items""" OWNER TO "app owner""#,
            ]
        );
        for statement in &stmts {
            pg_query::parse(statement, 0).unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    }
}
