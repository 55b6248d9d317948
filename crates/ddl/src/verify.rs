//! Whether a shard (or a replica, or the coordinator's own relation) is what the catalog's
//! record of its table says it should be: the pure comparison behind `shoal table check`.
//!
//! A shard is the record's definition with every constraint and index name suffixed by the
//! shard id, and without defaults (the coordinator computes every value it sends). Its foreign
//! keys point at shards or replicas on its own node, so they are compared by their columns and
//! actions, not by the table they name.

use std::collections::BTreeMap;

use crate::definition::{shard_object_name, ConstraintKind, ReplicaIdentity, TableDef};

/// A column as far as the holders of a table must agree on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnShape {
    pub name: String,
    pub type_sql: String,
    pub not_null: bool,
    pub collation: Option<String>,
    /// Only where defaults are kept (the coordinator's relation).
    pub default: Option<String>,
}

/// The parts of a definition that must agree, keyed by the names they have where they live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    pub columns: Vec<ColumnShape>,
    /// Constraint name to definition (a foreign key's as columns, referenced columns, actions).
    pub constraints: BTreeMap<String, String>,
    /// Index name to (unique, method and keys).
    pub indexes: BTreeMap<String, (bool, String)>,
    pub replica_identity: Option<String>,
}

/// Which parts of the record a relation holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A shard of a hash or schema table, whose object names end with the shard id.
    Shard(i64),
    /// A reference table's replica on a node: every part, under the same names.
    Replica,
    /// The coordinator's relation of a hash or schema table: columns with their defaults,
    /// check constraints and plain indexes (unique ones and foreign keys live on the shards).
    ShardedCoordinator,
    /// A reference table on the coordinator: the record itself.
    ReferenceCoordinator,
}

fn constraint_text(def: &TableDef, name: &str) -> Option<String> {
    let constraint = def.constraints.iter().find(|c| c.name == name)?;
    Some(match &constraint.foreign_key {
        Some(fk) => format!(
            "FOREIGN KEY ({}) REFERENCES ({}) {}",
            fk.columns.join(", "),
            fk.referenced_columns.join(", "),
            fk.actions_sql
        ),
        None => constraint.definition.clone(),
    })
}

fn column_shapes(def: &TableDef, holder: Holder) -> Vec<ColumnShape> {
    let keeps_defaults = matches!(
        holder,
        Holder::ShardedCoordinator | Holder::ReferenceCoordinator
    );
    def.columns
        .iter()
        .map(|c| ColumnShape {
            name: c.name.clone(),
            type_sql: c.type_sql.clone(),
            not_null: c.not_null,
            collation: c.collation_sql.clone(),
            default: c.default_sql.clone().filter(|_| keeps_defaults),
        })
        .collect()
}

/// The shape a holder of `record` must have.
pub fn expected(record: &TableDef, holder: Holder) -> Shape {
    let rename = |name: &str| match holder {
        Holder::Shard(id) => shard_object_name(name, id),
        _ => name.to_string(),
    };
    let on_coordinator_only_checks = holder == Holder::ShardedCoordinator;
    let columns = column_shapes(record, holder);
    let constraints = record
        .constraints
        .iter()
        .filter(|c| !on_coordinator_only_checks || c.kind == ConstraintKind::Check)
        .map(|c| {
            (
                rename(&c.name),
                constraint_text(record, &c.name).unwrap_or_default(),
            )
        })
        .collect();
    let indexes = record
        .indexes
        .iter()
        .filter(|i| !on_coordinator_only_checks || !i.unique)
        .map(|i| (rename(&i.name), (i.unique, i.method_and_keys.clone())))
        .collect();
    let replica_identity = match holder {
        Holder::ShardedCoordinator | Holder::ReferenceCoordinator | Holder::Replica => None,
        Holder::Shard(_) => Some(identity_text(&record.replica_identity, &rename)),
    };
    Shape {
        columns,
        constraints,
        indexes,
        replica_identity,
    }
}

fn identity_text(identity: &ReplicaIdentity, rename: &dyn Fn(&str) -> String) -> String {
    match identity {
        ReplicaIdentity::Default => "default".into(),
        ReplicaIdentity::Nothing => "nothing".into(),
        ReplicaIdentity::Full => "full".into(),
        ReplicaIdentity::Index(name) => format!("index {}", rename(name)),
    }
}

/// The shape a relation actually has, read as a holder of the given kind.
pub fn actual(def: &TableDef, holder: Holder) -> Shape {
    Shape {
        columns: column_shapes(def, holder),
        constraints: def
            .constraints
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    constraint_text(def, &c.name).unwrap_or_default(),
                )
            })
            .collect(),
        indexes: def
            .indexes
            .iter()
            .map(|i| (i.name.clone(), (i.unique, i.method_and_keys.clone())))
            .collect(),
        replica_identity: match holder {
            Holder::Shard(_) => Some(identity_text(&def.replica_identity, &|n: &str| {
                n.to_string()
            })),
            _ => None,
        },
    }
}

/// Every difference between what a relation should be and what it is, in words.
pub fn differences(expected: &Shape, actual: &Shape) -> Vec<String> {
    let mut out = Vec::new();
    if expected.columns != actual.columns {
        out.push(format!(
            "columns are {} where the record says {}",
            describe_columns(&actual.columns),
            describe_columns(&expected.columns)
        ));
    }
    compare_maps(
        "constraint",
        &expected.constraints,
        &actual.constraints,
        &mut out,
    );
    compare_maps("index", &expected.indexes, &actual.indexes, &mut out);
    if expected.replica_identity != actual.replica_identity {
        out.push(format!(
            "replica identity is {} where the record says {}",
            actual.replica_identity.as_deref().unwrap_or("-"),
            expected.replica_identity.as_deref().unwrap_or("-")
        ));
    }
    out
}

fn describe_columns(columns: &[ColumnShape]) -> String {
    let parts: Vec<String> = columns
        .iter()
        .map(|c| {
            let mut text = format!("{} {}", c.name, c.type_sql);
            if let Some(collation) = &c.collation {
                text.push_str(&format!(" collate {collation}"));
            }
            if c.not_null {
                text.push_str(" not null");
            }
            if let Some(default) = &c.default {
                text.push_str(&format!(" default {default}"));
            }
            text
        })
        .collect();
    format!("({})", parts.join(", "))
}

fn compare_maps<V: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: &BTreeMap<String, V>,
    actual: &BTreeMap<String, V>,
    out: &mut Vec<String>,
) {
    for (name, value) in expected {
        match actual.get(name) {
            None => out.push(format!("{what} {name} is missing")),
            Some(found) if found != value => out.push(format!(
                "{what} {name} is {found:?} where the record says {value:?}"
            )),
            Some(_) => {}
        }
    }
    for name in actual.keys().filter(|n| !expected.contains_key(*n)) {
        out.push(format!("{what} {name} is not in the record"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{ColumnDef, ConstraintDef, ForeignKeyDef, IndexDef};
    use shoal_sql::QualifiedName;

    fn column(name: &str, default: Option<&str>) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_sql: "integer".into(),
            not_null: false,
            collation_sql: None,
            default_sql: default.map(str::to_string),
            identity: false,
            generated: false,
            attnum: None,
        }
    }

    fn record() -> TableDef {
        TableDef {
            relid: 1,
            name: QualifiedName::new("public", "t"),
            relkind: "r".into(),
            columns: vec![column("id", None), column("k", Some("7"))],
            constraints: vec![
                ConstraintDef {
                    name: "t_pkey".into(),
                    kind: ConstraintKind::PrimaryKey,
                    columns: vec!["id".into()],
                    definition: "PRIMARY KEY (id)".into(),
                    foreign_key: None,
                },
                ConstraintDef {
                    name: "k_positive".into(),
                    kind: ConstraintKind::Check,
                    columns: vec!["k".into()],
                    definition: "CHECK ((k > 0))".into(),
                    foreign_key: None,
                },
                ConstraintDef {
                    name: "t_k_fkey".into(),
                    kind: ConstraintKind::ForeignKey,
                    columns: vec!["k".into()],
                    definition: "FOREIGN KEY (k) REFERENCES public.r(id)".into(),
                    foreign_key: Some(ForeignKeyDef {
                        columns: vec!["k".into()],
                        referenced_relid: 2,
                        referenced: QualifiedName::new("public", "r"),
                        referenced_columns: vec!["id".into()],
                        actions_sql: String::new(),
                    }),
                },
            ],
            indexes: vec![IndexDef {
                name: "t_k_idx".into(),
                unique: false,
                key_columns: vec!["k".into()],
                method_and_keys: "btree (k)".into(),
            }],
            replica_identity: ReplicaIdentity::Default,
        }
    }

    /// The record as a shard built from it would read back.
    fn shard_of(record: &TableDef, id: i64) -> TableDef {
        let mut shard = record.clone();
        for c in &mut shard.columns {
            c.default_sql = None;
        }
        for c in &mut shard.constraints {
            c.name = shard_object_name(&c.name, id);
            if let Some(fk) = &mut c.foreign_key {
                fk.referenced = QualifiedName::new("public", "r_somewhere_else");
            }
        }
        for i in &mut shard.indexes {
            i.name = shard_object_name(&i.name, id);
        }
        shard
    }

    #[test]
    fn a_shard_built_from_the_record_matches_it() {
        let record = record();
        let shard = shard_of(&record, 102008);
        let holder = Holder::Shard(102008);
        assert_eq!(
            differences(&expected(&record, holder), &actual(&shard, holder)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_missing_column_and_a_stray_index_are_reported() {
        let record = record();
        let mut shard = shard_of(&record, 7);
        shard.columns.pop();
        shard.indexes.push(IndexDef {
            name: "extra_7".into(),
            unique: true,
            key_columns: vec![],
            method_and_keys: "btree (id)".into(),
        });
        let found = differences(
            &expected(&record, Holder::Shard(7)),
            &actual(&shard, Holder::Shard(7)),
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("columns are (id integer)"),
            "{found:?}"
        );
        assert_eq!(found[1], "index extra_7 is not in the record");
    }

    #[test]
    fn the_coordinator_of_a_sharded_table_holds_checks_plain_indexes_and_defaults() {
        let record = record();
        let mut coordinator = record.clone();
        coordinator
            .constraints
            .retain(|c| c.kind == ConstraintKind::Check);
        let holder = Holder::ShardedCoordinator;
        assert!(differences(&expected(&record, holder), &actual(&coordinator, holder)).is_empty());
        coordinator.columns[1].default_sql = None;
        let found = differences(&expected(&record, holder), &actual(&coordinator, holder));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("k integer default 7"), "{found:?}");
    }
}
