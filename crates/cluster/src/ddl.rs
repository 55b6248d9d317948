//! Table definitions: read from the coordinator's catalogs (the I/O half, [`introspect`]) and
//! turned into the DDL of shard tables and of the coordinator's replacement tables (the pure
//! half). Every name that reaches SQL text goes through [`quote_ident`].

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::error::{ClusterError, PgContext};
use shoal_sql::{derived_name, quote_ident, QualifiedName};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    /// As `format_type` prints it with an empty search path (user types schema-qualified).
    pub type_sql: String,
    pub not_null: bool,
    /// Quoted collation name, when it differs from the type's default.
    pub collation_sql: Option<String>,
    pub default_sql: Option<String>,
    pub identity: bool,
    pub generated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintKind {
    PrimaryKey,
    Unique,
    Check,
    ForeignKey,
    Exclusion,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKeyDef {
    pub columns: Vec<String>,
    pub referenced_relid: u32,
    pub referenced: QualifiedName,
    pub referenced_columns: Vec<String>,
    /// The clause after the column lists (`MATCH FULL ON UPDATE ... ON DELETE ... DEFERRABLE`).
    pub actions_sql: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstraintDef {
    pub name: String,
    pub kind: ConstraintKind,
    /// The constrained columns, in key order.
    pub columns: Vec<String>,
    /// `pg_get_constraintdef`: the definition without the table name.
    pub definition: String,
    pub foreign_key: Option<ForeignKeyDef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    pub name: String,
    pub unique: bool,
    /// Plain key columns (expression keys are not listed).
    pub key_columns: Vec<String>,
    /// Everything after `USING` in `pg_get_indexdef`: method, keys, INCLUDE, WITH, WHERE.
    pub method_and_keys: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaIdentity {
    Default,
    Nothing,
    Full,
    /// The index (or constraint) whose name is given.
    Index(String),
}

/// What a table is made of, enough to recreate it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub relid: u32,
    pub name: QualifiedName,
    /// `pg_class.relkind`: `r` table, `p` partitioned, `f` foreign.
    pub relkind: String,
    pub columns: Vec<ColumnDef>,
    pub constraints: Vec<ConstraintDef>,
    pub indexes: Vec<IndexDef>,
    pub replica_identity: ReplicaIdentity,
}

impl TableDef {
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn has_primary_key(&self) -> bool {
        self.constraints
            .iter()
            .any(|c| c.kind == ConstraintKind::PrimaryKey)
    }

    pub fn foreign_keys(&self) -> impl Iterator<Item = (&ConstraintDef, &ForeignKeyDef)> {
        self.constraints
            .iter()
            .filter_map(|c| c.foreign_key.as_ref().map(|fk| (c, fk)))
    }
}

/// Reads a table's definition. Runs with an empty search path (set locally, so pass a
/// transaction; the caller's search path is restored afterwards) so that every name PostgreSQL
/// prints back is schema-qualified.
pub async fn introspect(client: &impl GenericClient, relid: u32) -> Result<TableDef, ClusterError> {
    let ctx = || format!("reading the definition of relation {relid}");
    let saved: String = client
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .context(ctx)?
        .get(0);
    client
        .execute("SELECT set_config('search_path', '', true)", &[])
        .await
        .context(ctx)?;
    let def = introspect_qualified(client, relid).await;
    client
        .execute("SELECT set_config('search_path', $1, true)", &[&saved])
        .await
        .context(ctx)?;
    def
}

async fn introspect_qualified(
    client: &impl GenericClient,
    relid: u32,
) -> Result<TableDef, ClusterError> {
    let ctx = || format!("reading the definition of relation {relid}");
    let head = client
        .query_one(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relreplident::text,
                    quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = $1",
            &[&relid],
        )
        .await
        .context(ctx)?;
    let name = QualifiedName::new(head.get::<_, String>(0), head.get::<_, String>(1));
    let relkind: String = head.get(2);
    let replident: String = head.get(3);
    let printed_table: String = head.get(4);

    let columns = client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN
                        (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                         FROM pg_catalog.pg_collation co
                         JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                         WHERE co.oid = a.attcollation)
                    END,
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid),
                    a.attidentity <> '', a.attgenerated <> ''
             FROM pg_catalog.pg_attribute a
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&relid],
        )
        .await
        .context(ctx)?
        .iter()
        .map(|r| ColumnDef {
            name: r.get(0),
            type_sql: r.get(1),
            not_null: r.get(2),
            collation_sql: r.get(3),
            default_sql: r.get(4),
            identity: r.get(5),
            generated: r.get(6),
        })
        .collect();

    let constraints = client
        .query(
            "SELECT con.conname::text, con.contype::text, pg_catalog.pg_get_constraintdef(con.oid),
                    con.confrelid,
                    rn.nspname::text, rc.relname::text,
                    ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n
                          ORDER BY k.o),
                    ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n
                          ORDER BY k.o)
             FROM pg_catalog.pg_constraint con
             LEFT JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
             LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
             WHERE con.conrelid = $1 AND con.contype IN ('p', 'u', 'c', 'f', 'x')
             ORDER BY con.contype DESC, con.conname",
            &[&relid],
        )
        .await
        .context(ctx)?
        .iter()
        .map(|r| {
            let contype: String = r.get(1);
            let definition: String = r.get(2);
            let kind = match contype.as_str() {
                "p" => ConstraintKind::PrimaryKey,
                "u" => ConstraintKind::Unique,
                "c" => ConstraintKind::Check,
                "f" => ConstraintKind::ForeignKey,
                _ => ConstraintKind::Exclusion,
            };
            let foreign_key = (kind == ConstraintKind::ForeignKey).then(|| ForeignKeyDef {
                columns: r.get(6),
                referenced_relid: r.get(3),
                referenced: QualifiedName::new(
                    r.get::<_, Option<String>>(4).unwrap_or_default(),
                    r.get::<_, Option<String>>(5).unwrap_or_default(),
                ),
                referenced_columns: r.get(7),
                actions_sql: foreign_key_actions(&definition),
            });
            ConstraintDef { name: r.get(0), kind, columns: r.get(6), definition, foreign_key }
        })
        .collect();

    let index_rows = client
        .query(
            "SELECT ic.relname::text, i.indisunique, pg_catalog.pg_get_indexdef(i.indexrelid),
                    quote_ident(ic.relname), i.indisreplident,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid
                            AND c.conrelid = i.indrelid),
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                          ORDER BY k.o)
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = $1 ORDER BY ic.relname",
            &[&relid],
        )
        .await
        .context(ctx)?;
    let mut indexes = Vec::new();
    let mut replica_index = None;
    for row in &index_rows {
        let index_name: String = row.get(0);
        if row.get::<_, bool>(4) {
            replica_index = Some(index_name.clone());
        }
        if row.get::<_, bool>(5) {
            continue; // created with its constraint
        }
        let full: String = row.get(2);
        let method_and_keys = split_index_definition(&full, row.get(3), &printed_table)
            .ok_or_else(|| {
                ClusterError::Unsupported(format!(
                    "cannot read the definition of index {index_name} ({full}); drop it and create it again after distributing"
                ))
            })?;
        indexes.push(IndexDef {
            name: index_name,
            unique: row.get(1),
            key_columns: row.get(6),
            method_and_keys,
        });
    }
    let replica_identity = match replident.as_str() {
        "n" => ReplicaIdentity::Nothing,
        "f" => ReplicaIdentity::Full,
        "i" => replica_index
            .map(ReplicaIdentity::Index)
            .unwrap_or(ReplicaIdentity::Default),
        _ => ReplicaIdentity::Default,
    };
    Ok(TableDef {
        relid,
        name,
        relkind,
        columns,
        constraints,
        indexes,
        replica_identity,
    })
}

/// Takes `pg_get_indexdef` output apart: returns what follows `USING `, after checking that the
/// text before it is exactly the index and table names PostgreSQL printed.
pub fn split_index_definition(
    full: &str,
    printed_index: &str,
    printed_table: &str,
) -> Option<String> {
    let rest = full
        .strip_prefix("CREATE UNIQUE INDEX ")
        .or_else(|| full.strip_prefix("CREATE INDEX "))?;
    let rest = rest.strip_prefix(printed_index)?.strip_prefix(" ON ")?;
    let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
    let rest = rest.strip_prefix(printed_table)?.strip_prefix(" USING ")?;
    Some(rest.to_string())
}

/// The referential actions of a foreign key definition: everything after `REFERENCES t(cols)`.
fn foreign_key_actions(definition: &str) -> String {
    // pg_get_constraintdef prints `FOREIGN KEY (a) REFERENCES t(b) <actions>`: the actions
    // follow the first `)` after `REFERENCES`. Quoted column names may contain `)`, so walk
    // the text honouring double quotes.
    let Some(start) = definition.find(" REFERENCES ") else {
        return String::new();
    };
    let mut in_quotes = false;
    let mut seen_open = false;
    for (i, ch) in definition[start..].char_indices() {
        match ch {
            '"' => in_quotes = !in_quotes,
            '(' if !in_quotes => seen_open = true,
            ')' if !in_quotes && seen_open => {
                return definition[start + i + 1..].trim().to_string();
            }
            _ => {}
        }
    }
    String::new()
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Column definitions for `CREATE TABLE` / `CREATE FOREIGN TABLE`. Defaults are kept only where
/// rows are inserted directly (a schema table's foreign table on the coordinator); shard tables
/// get values the coordinator already computed.
pub fn column_definitions(columns: &[ColumnDef], with_defaults: bool) -> String {
    columns
        .iter()
        .map(|c| {
            let mut text = format!("{} {}", quote_ident(&c.name), c.type_sql);
            if let Some(collation) = &c.collation_sql {
                text.push_str(" COLLATE ");
                text.push_str(collation);
            }
            if with_defaults {
                if let Some(default) = &c.default_sql {
                    text.push_str(" DEFAULT ");
                    text.push_str(default);
                }
            }
            if c.not_null {
                text.push_str(" NOT NULL");
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name a constraint or index of a shard gets: names of indexes share one namespace per
/// schema, so every shard's copy is suffixed with its shard id.
pub fn shard_object_name(name: &str, shard_id: i64) -> String {
    derived_name(name, &shard_id.to_string())
}

/// DDL that creates a table like `def` under `target`, with its primary key, unique, check and
/// exclusion constraints, its indexes and its replica identity, but no foreign keys (see
/// [`foreign_key_ddl`], run once every referenced table exists). `suffix` makes index and
/// constraint names unique per schema (the shard id), or `None` to keep the original names.
pub fn shard_table_ddl(def: &TableDef, target: &QualifiedName, suffix: Option<i64>) -> Vec<String> {
    let phases = shard_table_phases(def, target, suffix);
    phases
        .create
        .into_iter()
        .chain(phases.identity)
        .chain(phases.after_copy)
        .collect()
}

/// A shard table's DDL split for a copy: the bare table the rows are copied into, then what
/// logical replication needs before it applies changes, then everything else. Indexes are
/// faster to build over the copied rows than to maintain row by row during the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardTablePhases {
    /// Schema and table, without constraints or indexes.
    pub create: Vec<String>,
    /// Primary key, replica identity index and replica identity: applying an update or a
    /// delete finds the row by them.
    pub identity: Vec<String>,
    /// Every other constraint and index.
    pub after_copy: Vec<String>,
}

pub fn shard_table_phases(
    def: &TableDef,
    target: &QualifiedName,
    suffix: Option<i64>,
) -> ShardTablePhases {
    let rename = |name: &str| match suffix {
        Some(id) => shard_object_name(name, id),
        None => name.to_string(),
    };
    let identity_index = match &def.replica_identity {
        ReplicaIdentity::Index(name) => Some(name.as_str()),
        _ => None,
    };
    let table = target.quoted();
    let create = vec![
        format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(&target.schema)
        ),
        format!(
            "CREATE TABLE {table} ({})",
            column_definitions(&def.columns, false)
        ),
    ];
    let mut identity = Vec::new();
    let mut after_copy = Vec::new();
    for constraint in &def.constraints {
        if constraint.kind == ConstraintKind::ForeignKey {
            continue;
        }
        let statement = format!(
            "ALTER TABLE {table} ADD CONSTRAINT {} {}",
            quote_ident(&rename(&constraint.name)),
            constraint.definition
        );
        if constraint.kind == ConstraintKind::PrimaryKey || identity_index == Some(&constraint.name)
        {
            identity.push(statement);
        } else {
            after_copy.push(statement);
        }
    }
    for index in &def.indexes {
        let statement = format!(
            "CREATE {}INDEX {} ON {table} USING {}",
            if index.unique { "UNIQUE " } else { "" },
            quote_ident(&rename(&index.name)),
            index.method_and_keys
        );
        if identity_index == Some(&index.name) {
            identity.push(statement);
        } else {
            after_copy.push(statement);
        }
    }
    match &def.replica_identity {
        ReplicaIdentity::Default => {}
        ReplicaIdentity::Nothing => {
            identity.push(format!("ALTER TABLE {table} REPLICA IDENTITY NOTHING"))
        }
        ReplicaIdentity::Full => {
            identity.push(format!("ALTER TABLE {table} REPLICA IDENTITY FULL"))
        }
        ReplicaIdentity::Index(name) => identity.push(format!(
            "ALTER TABLE {table} REPLICA IDENTITY USING INDEX {}",
            quote_ident(&rename(name))
        )),
    }
    ShardTablePhases {
        create,
        identity,
        after_copy,
    }
}

/// Whether logical replication can apply updates and deletes of the table: it needs a primary
/// key, a replica identity index, or `REPLICA IDENTITY FULL`.
pub fn has_replica_identity(def: &TableDef) -> bool {
    match def.replica_identity {
        ReplicaIdentity::Full | ReplicaIdentity::Index(_) => true,
        ReplicaIdentity::Nothing => false,
        ReplicaIdentity::Default => def.has_primary_key(),
    }
}

/// `ALTER TABLE .. ADD CONSTRAINT .. FOREIGN KEY` for a shard (or replica) whose referenced table
/// is `referenced` on the same node.
pub fn foreign_key_ddl(
    table: &QualifiedName,
    constraint: &ConstraintDef,
    fk: &ForeignKeyDef,
    referenced: &QualifiedName,
    suffix: Option<i64>,
) -> String {
    let name = match suffix {
        Some(id) => shard_object_name(&constraint.name, id),
        None => constraint.name.clone(),
    };
    let mut text = format!(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})",
        table.quoted(),
        quote_ident(&name),
        column_list(&fk.columns),
        referenced.quoted(),
        column_list(&fk.referenced_columns),
    );
    if !fk.actions_sql.is_empty() {
        text.push(' ');
        text.push_str(&fk.actions_sql);
    }
    text
}

/// DDL that gives a plain coordinator table back the constraints (foreign keys included) and
/// indexes it had before it was distributed. Check constraints are left out (the table is made
/// with `LIKE ... INCLUDING CONSTRAINTS`, which keeps them), and so are foreign keys whose
/// referenced table `keep_fk` rejects.
pub fn restore_ddl(
    def: &TableDef,
    table: &QualifiedName,
    keep_fk: impl Fn(&ForeignKeyDef) -> bool,
) -> Vec<String> {
    let without_checks = TableDef {
        constraints: def
            .constraints
            .iter()
            .filter(|c| c.kind != ConstraintKind::Check)
            .cloned()
            .collect(),
        ..def.clone()
    };
    let mut ddl: Vec<String> = shard_table_ddl(&without_checks, table, None)
        .into_iter()
        .skip(2)
        .collect();
    for (constraint, fk) in def.foreign_keys() {
        if keep_fk(fk) {
            ddl.push(foreign_key_ddl(table, constraint, fk, &fk.referenced, None));
        }
    }
    ddl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> TableDef {
        TableDef {
            relid: 1,
            name: QualifiedName::new("public", "Order \"Items\""),
            relkind: "r".into(),
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    type_sql: "bigint".into(),
                    not_null: true,
                    collation_sql: None,
                    default_sql: Some("nextval('public.s'::regclass)".into()),
                    identity: false,
                    generated: false,
                },
                ColumnDef {
                    name: "Note".into(),
                    type_sql: "text".into(),
                    not_null: false,
                    collation_sql: Some("pg_catalog.\"C\"".into()),
                    default_sql: None,
                    identity: false,
                    generated: false,
                },
            ],
            constraints: vec![
                ConstraintDef {
                    name: "orders_pkey".into(),
                    kind: ConstraintKind::PrimaryKey,
                    columns: vec!["id".into()],
                    definition: "PRIMARY KEY (id)".into(),
                    foreign_key: None,
                },
                ConstraintDef {
                    name: "fk_product".into(),
                    kind: ConstraintKind::ForeignKey,
                    columns: vec!["id".into()],
                    definition: "FOREIGN KEY (id) REFERENCES public.products(id) ON DELETE CASCADE"
                        .into(),
                    foreign_key: Some(ForeignKeyDef {
                        columns: vec!["id".into()],
                        referenced_relid: 2,
                        referenced: QualifiedName::new("public", "products"),
                        referenced_columns: vec!["id".into()],
                        actions_sql: "ON DELETE CASCADE".into(),
                    }),
                },
            ],
            indexes: vec![IndexDef {
                name: "by_note".into(),
                unique: false,
                key_columns: vec!["Note".into()],
                method_and_keys: "btree (\"Note\")".into(),
            }],
            replica_identity: ReplicaIdentity::Full,
        }
    }

    #[test]
    fn shard_ddl_renames_objects_and_quotes_names() {
        let target = QualifiedName::new("public", "Order \"Items\"_102008");
        let ddl = shard_table_ddl(&orders(), &target, Some(102008));
        assert_eq!(ddl[0], r#"CREATE SCHEMA IF NOT EXISTS "public""#);
        assert_eq!(
            ddl[1],
            r#"CREATE TABLE "public"."Order ""Items""_102008" ("id" bigint NOT NULL, "Note" text COLLATE pg_catalog."C")"#
        );
        assert!(ddl.contains(
            &r#"ALTER TABLE "public"."Order ""Items""_102008" ADD CONSTRAINT "orders_pkey_102008" PRIMARY KEY (id)"#.to_string()
        ));
        assert!(ddl.contains(
            &r#"CREATE INDEX "by_note_102008" ON "public"."Order ""Items""_102008" USING btree ("Note")"#.to_string()
        ));
        assert!(ddl.contains(
            &r#"ALTER TABLE "public"."Order ""Items""_102008" REPLICA IDENTITY FULL"#.to_string()
        ));
        assert!(
            !ddl.iter().any(|s| s.contains("FOREIGN KEY")),
            "foreign keys come later"
        );
    }

    #[test]
    fn the_copy_goes_into_a_bare_table_then_identity_then_the_rest() {
        let phases = shard_table_phases(&orders(), &QualifiedName::new("public", "o_1"), Some(1));
        assert_eq!(phases.create.len(), 2, "{:?}", phases.create);
        assert!(phases.create[0].starts_with("CREATE SCHEMA IF NOT EXISTS"));
        assert!(phases.create[1].starts_with("CREATE TABLE"));
        assert!(phases.identity[0].contains("PRIMARY KEY"));
        assert!(phases
            .identity
            .last()
            .unwrap()
            .contains("REPLICA IDENTITY FULL"));
        assert!(phases
            .after_copy
            .iter()
            .all(|s| s.starts_with("CREATE INDEX")));
        assert_eq!(phases.after_copy.len(), 1);
        let mut no_key = orders();
        no_key.constraints.clear();
        assert!(has_replica_identity(&no_key), "FULL is enough");
        no_key.replica_identity = ReplicaIdentity::Default;
        assert!(!has_replica_identity(&no_key));
        assert!(has_replica_identity(&orders()));
    }

    #[test]
    fn foreign_keys_point_at_the_given_table() {
        let def = orders();
        let (constraint, fk) = def.foreign_keys().next().unwrap();
        let shard = QualifiedName::new("public", "o_7");
        let text = foreign_key_ddl(
            &shard,
            constraint,
            fk,
            &QualifiedName::new("public", "p_8"),
            Some(7),
        );
        assert_eq!(
            text,
            r#"ALTER TABLE "public"."o_7" ADD CONSTRAINT "fk_product_7" FOREIGN KEY ("id") REFERENCES "public"."p_8" ("id") ON DELETE CASCADE"#
        );
    }

    #[test]
    fn defaults_only_where_asked() {
        let def = orders();
        assert!(!column_definitions(&def.columns, false).contains("DEFAULT"));
        assert!(column_definitions(&def.columns, true)
            .contains("\"id\" bigint DEFAULT nextval('public.s'::regclass) NOT NULL"));
    }

    #[test]
    fn restore_keeps_original_names_and_filters_foreign_keys() {
        let def = orders();
        let table = QualifiedName::new("public", "orders");
        let all = restore_ddl(&def, &table, |_| true);
        assert!(all
            .iter()
            .any(|s| s.contains("\"orders_pkey\" PRIMARY KEY")));
        assert!(all.iter().any(|s| s.contains("\"fk_product\" FOREIGN KEY")));
        assert!(!all.iter().any(|s| s.starts_with("CREATE TABLE")));
        let no_fk = restore_ddl(&def, &table, |_| false);
        assert!(!no_fk.iter().any(|s| s.contains("FOREIGN KEY")));
    }

    #[test]
    fn index_definitions_are_split_after_using() {
        assert_eq!(
            split_index_definition(
                "CREATE UNIQUE INDEX \"Idx\" ON ONLY \"my s\".\"T\" USING btree (a) WHERE (a > 0)",
                "\"Idx\"",
                "\"my s\".\"T\""
            ),
            Some("btree (a) WHERE (a > 0)".to_string())
        );
        assert_eq!(
            split_index_definition("CREATE INDEX x ON public.t USING hash (a)", "y", "public.t"),
            None
        );
    }

    #[test]
    fn foreign_key_actions_skip_quoted_parentheses() {
        assert_eq!(
            foreign_key_actions(
                r#"FOREIGN KEY (a) REFERENCES public."t)"(")x") MATCH FULL ON DELETE SET NULL"#
            ),
            "MATCH FULL ON DELETE SET NULL"
        );
        assert_eq!(foreign_key_actions("FOREIGN KEY (a) REFERENCES t(b)"), "");
    }
}
