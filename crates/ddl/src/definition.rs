//! Table definitions: read from the coordinator's catalogs (the I/O half, [`introspect`]) and
//! turned into the DDL of shard tables and of the coordinator's replacement tables (the pure
//! half). Every name that reaches SQL text goes through [`quote_ident`].

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::error::{Context, DdlError};
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
    /// Its attribute number in the coordinator's relation: DDL propagation matches columns by
    /// it, since a rename keeps it.
    #[serde(default)]
    pub attnum: Option<i16>,
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

    /// The definition of a table made from this one with `CREATE TABLE .. (LIKE ..)`, which
    /// numbers the columns from 1 (the dropped ones of this table leave no gaps there).
    pub fn numbered_as_copy(&self) -> TableDef {
        let mut copy = self.clone();
        for (i, column) in copy.columns.iter_mut().enumerate() {
            column.attnum = Some(i as i16 + 1);
        }
        copy
    }

    pub fn foreign_keys(&self) -> impl Iterator<Item = (&ConstraintDef, &ForeignKeyDef)> {
        self.constraints
            .iter()
            .filter_map(|c| c.foreign_key.as_ref().map(|fk| (c, fk)))
    }
}

/// Reads a table's definition with `shoal.describe_table`, the reader the coordinator's DDL
/// propagation uses too (installed by `shoal init`), so the catalog's records have one format.
/// Every name in it is schema-qualified.
pub async fn introspect(client: &impl GenericClient, relid: u32) -> Result<TableDef, DdlError> {
    let json: serde_json::Value = client
        .query_one("SELECT shoal.describe_table($1)", &[&relid])
        .await
        .context(|| format!("reading the definition of relation {relid}"))?
        .get(0);
    serde_json::from_value(json).map_err(|e| DdlError::Unreadable {
        what: format!("the definition of relation {relid}"),
        reason: e.to_string(),
    })
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
                    attnum: None,
                },
                ColumnDef {
                    name: "Note".into(),
                    type_sql: "text".into(),
                    not_null: false,
                    collation_sql: Some("pg_catalog.\"C\"".into()),
                    default_sql: None,
                    identity: false,
                    generated: false,
                    attnum: None,
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
    fn a_copy_made_with_like_numbers_its_columns_from_one() {
        let mut def = orders();
        def.columns[0].attnum = Some(3);
        def.columns[1].attnum = Some(7);
        let copy = def.numbered_as_copy();
        let numbers: Vec<_> = copy.columns.iter().map(|c| c.attnum).collect();
        assert_eq!(numbers, vec![Some(1), Some(2)]);
    }
}
