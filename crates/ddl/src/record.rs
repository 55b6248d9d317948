//! The catalog's record of a table after a shard-only change (pure): the definitions come from
//! a shard that has the change (read back with `describe_table`), renamed to the names the
//! record keeps.

use crate::definition::{shard_object_name, TableDef};
use crate::statement::{RecordChange, Refusal};

const NOT_VALID: &str = " NOT VALID";

/// `record` changed as `change` says; `readback` is a shard's definition afterwards and
/// `shard_id` that shard's id (its objects' names end with it).
pub fn changed_record(
    record: &TableDef,
    change: &RecordChange,
    readback: Option<&TableDef>,
    shard_id: i64,
) -> Result<TableDef, Refusal> {
    let mut out = record.clone();
    let missing = |what: &str, name: &str| {
        Refusal(format!(
            "the shards have no {what} {name} after the change; run `shoal table check` to see what they have"
        ))
    };
    let shard_constraint = |name: &str| {
        readback.and_then(|def| {
            def.constraints
                .iter()
                .find(|c| c.name == shard_object_name(name, shard_id))
                .cloned()
        })
    };
    match change {
        RecordChange::AddConstraint { name, referenced } => {
            let mut constraint =
                shard_constraint(name).ok_or_else(|| missing("constraint", name))?;
            constraint.name = name.clone();
            if let (Some(fk), Some((relid, table))) = (&mut constraint.foreign_key, referenced) {
                // The shard's key names the table on its node; the record names the table.
                fk.referenced_relid = *relid;
                fk.referenced = table.clone();
                let not_valid = constraint.definition.ends_with(NOT_VALID);
                constraint.definition = format!(
                    "FOREIGN KEY ({}) REFERENCES {}({}){}{}",
                    fk.columns.join(", "),
                    table,
                    fk.referenced_columns.join(", "),
                    if fk.actions_sql.is_empty() { "" } else { " " },
                    fk.actions_sql
                );
                if not_valid {
                    constraint.definition.push_str(NOT_VALID);
                }
            }
            out.constraints.push(constraint);
        }
        RecordChange::RefreshConstraint(name) => {
            let fresh = shard_constraint(name).ok_or_else(|| missing("constraint", name))?;
            for constraint in out.constraints.iter_mut().filter(|c| &c.name == name) {
                constraint.definition = if constraint.foreign_key.is_some() {
                    // Validated: the same key, no longer NOT VALID.
                    constraint
                        .definition
                        .strip_suffix(NOT_VALID)
                        .unwrap_or(&constraint.definition)
                        .to_string()
                } else {
                    fresh.definition.clone()
                };
            }
        }
        RecordChange::DropConstraints(names) => {
            out.constraints.retain(|c| !names.contains(&c.name));
        }
        RecordChange::AddIndex(name) => {
            let mut index = readback
                .and_then(|def| {
                    def.indexes
                        .iter()
                        .find(|i| i.name == shard_object_name(name, shard_id))
                        .cloned()
                })
                .ok_or_else(|| missing("index", name))?;
            index.name = name.clone();
            out.indexes.push(index);
        }
        RecordChange::DropIndexes(names) => {
            out.indexes.retain(|i| !names.contains(&i.name));
        }
        RecordChange::ByCoordinator => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{
        ConstraintDef, ConstraintKind, ForeignKeyDef, IndexDef, ReplicaIdentity,
    };
    use shoal_sql::QualifiedName;

    fn table(constraints: Vec<ConstraintDef>, indexes: Vec<IndexDef>) -> TableDef {
        TableDef {
            relid: 1,
            name: QualifiedName::new("public", "t"),
            relkind: "r".into(),
            columns: Vec::new(),
            constraints,
            indexes,
            replica_identity: ReplicaIdentity::Default,
        }
    }

    fn fk(name: &str, referenced: &str, definition: &str) -> ConstraintDef {
        ConstraintDef {
            name: name.into(),
            kind: ConstraintKind::ForeignKey,
            columns: vec!["k".into()],
            definition: definition.into(),
            foreign_key: Some(ForeignKeyDef {
                columns: vec!["k".into()],
                referenced_relid: 99,
                referenced: QualifiedName::new("public", referenced),
                referenced_columns: vec!["id".into()],
                actions_sql: String::new(),
            }),
        }
    }

    #[test]
    fn an_added_foreign_key_points_at_the_coordinator_table() {
        let readback = table(
            vec![fk(
                "t_k_fkey_7",
                "u_8",
                "FOREIGN KEY (k) REFERENCES public.u_8(id)",
            )],
            vec![],
        );
        let change = RecordChange::AddConstraint {
            name: "t_k_fkey".into(),
            referenced: Some((5, QualifiedName::new("public", "u"))),
        };
        let out = changed_record(&table(vec![], vec![]), &change, Some(&readback), 7).unwrap();
        let added = &out.constraints[0];
        assert_eq!(added.name, "t_k_fkey");
        let target = added.foreign_key.as_ref().unwrap();
        assert_eq!(target.referenced, QualifiedName::new("public", "u"));
        assert_eq!(target.referenced_relid, 5);
        assert_eq!(added.definition, "FOREIGN KEY (k) REFERENCES public.u(id)");
    }

    #[test]
    fn validation_and_drops_follow_the_shard() {
        let record = table(
            vec![fk(
                "f",
                "u",
                "FOREIGN KEY (k) REFERENCES public.u(id) NOT VALID",
            )],
            vec![IndexDef {
                name: "one_k".into(),
                unique: true,
                key_columns: vec!["k".into()],
                method_and_keys: "btree (k)".into(),
            }],
        );
        let readback = table(
            vec![fk(
                "f_3",
                "u_4",
                "FOREIGN KEY (k) REFERENCES public.u_4(id)",
            )],
            vec![],
        );
        let validated = changed_record(
            &record,
            &RecordChange::RefreshConstraint("f".into()),
            Some(&readback),
            3,
        )
        .unwrap();
        assert_eq!(
            validated.constraints[0].definition,
            "FOREIGN KEY (k) REFERENCES public.u(id)"
        );
        let dropped = changed_record(
            &validated,
            &RecordChange::DropIndexes(vec!["one_k".into()]),
            None,
            3,
        )
        .unwrap();
        assert!(dropped.indexes.is_empty());
        let missing = changed_record(&record, &RecordChange::AddIndex("x".into()), None, 3);
        assert!(missing.is_err());
    }
}
