//! The statement with every relation renamed to what its node calls it: the shard table for a
//! distributed table, the replica for a reference table. A relation without an alias gets its
//! old name as one, so `orders.id` still means the same column. `ON CONFLICT ON CONSTRAINT`
//! names the shard's copy of the constraint.

use pg_query::protobuf::{Alias, RangeVar};
use pg_query::{Node, NodeEnum};

use super::{NotRoutable, Relation};
use shoal_sql::{derived_name, QualifiedName};

/// `statement` with `relations` renamed to `names`; `shard_id` is the written shard's, whose
/// constraint names carry it (`None` where names stay as they are).
pub(super) fn rewrite(
    statement: &NodeEnum,
    relations: &[Relation],
    names: &[QualifiedName],
    shard_id: Option<i64>,
) -> Result<String, NotRoutable> {
    let mut statement = statement.clone();
    let mut renames = relations.iter().zip(names);
    let mut rename = |range: &mut RangeVar| {
        let Some((relation, name)) = renames.next() else {
            return;
        };
        range.schemaname = name.schema.clone();
        range.relname = name.name.clone();
        if !relation.has_alias {
            range.alias = Some(Alias {
                aliasname: relation.visible.clone(),
                colnames: Vec::new(),
            });
        }
    };
    match &mut statement {
        NodeEnum::SelectStmt(select) => from_items(&mut select.from_clause, &mut rename),
        NodeEnum::InsertStmt(insert) => {
            if let Some(range) = insert.relation.as_mut() {
                rename(range);
            }
            let infer = insert
                .on_conflict_clause
                .as_mut()
                .and_then(|c| c.infer.as_mut());
            if let (Some(infer), Some(shard_id)) = (infer, shard_id) {
                if !infer.conname.is_empty() {
                    infer.conname = derived_name(&infer.conname, &shard_id.to_string());
                }
            }
        }
        NodeEnum::UpdateStmt(update) => {
            if let Some(range) = update.relation.as_mut() {
                rename(range);
            }
            from_items(&mut update.from_clause, &mut rename);
        }
        NodeEnum::DeleteStmt(delete) => {
            if let Some(range) = delete.relation.as_mut() {
                rename(range);
            }
            from_items(&mut delete.using_clause, &mut rename);
        }
        _ => {}
    }
    statement
        .deparse(Default::default())
        .map_err(|e| NotRoutable(format!("could not write the shard's statement: {e}")))
}

fn from_items(items: &mut [Node], rename: &mut impl FnMut(&mut RangeVar)) {
    for item in items {
        from_item(item.node.as_mut(), rename);
    }
}

fn from_item(item: Option<&mut NodeEnum>, rename: &mut impl FnMut(&mut RangeVar)) {
    match item {
        Some(NodeEnum::RangeVar(range)) => rename(range),
        Some(NodeEnum::JoinExpr(join)) => {
            from_item(
                join.larg.as_deref_mut().and_then(|n| n.node.as_mut()),
                rename,
            );
            from_item(
                join.rarg.as_deref_mut().and_then(|n| n.node.as_mut()),
                rename,
            );
        }
        _ => {}
    }
}
