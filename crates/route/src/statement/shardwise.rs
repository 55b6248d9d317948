//! The FROM clause of a read split across shards: which shard tables (and reference replicas)
//! each shard index joins, and whether joining them shard by shard gives the whole answer.
//!
//! Joining shard index `i` of every distributed table (with whole replicas of the reference
//! tables) yields exactly the rows of the full join whose distributed rows all live in shard
//! `i`, when the rows the join produces never pair rows of different shards. That holds when:
//!
//! - every distributed table is in one colocation group, each shard index on one node;
//! - with inner joins only, their distribution columns are all equal by conjuncts of the ON
//!   conditions or of WHERE (a row pairing two shards fails one of them);
//! - with outer joins, each join of two sides that both hold distributed tables equates a
//!   distribution column of each side in its own ON (or USING): then a row without a match
//!   in its shard has none anywhere, so the NULL-extended rows are the same too;
//! - a reference table is never the preserved side of an outer join whose other side holds
//!   distributed tables (each shard would extend the same reference row with NULLs).

use pg_query::protobuf::{AExprKind, JoinExpr, JoinType, SelectStmt};
use pg_query::{Node, NodeEnum};

use super::{conjuncts, has_outer_join, refuse, rewrite, NotRoutable, Planner};
use crate::topology::{Placement, Topology};
use shoal_sql::QualifiedName;

/// A FROM clause that may run once per shard index.
pub(crate) struct Shardwise<'a> {
    planner: Planner<'a>,
    /// Per relation: whether an outer join can give it NULLs.
    nullable: Vec<bool>,
    /// Per shard index: its node and every relation's name there, in the relations' order.
    shards: Vec<(i32, Vec<QualifiedName>)>,
}

/// Whether a FROM item's rows are split by shard (they hold a distributed table) or the same
/// on every node (reference tables only).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    Sharded,
    Replicated,
}

impl<'a> Shardwise<'a> {
    /// Checks `select`'s FROM and WHERE; refuses what shard-by-shard joins would answer wrong.
    pub(crate) fn of(
        select: &SelectStmt,
        topology: &'a Topology,
    ) -> Result<Shardwise<'a>, NotRoutable> {
        let mut planner = Planner::new(topology);
        planner.read_from_clause(&select.from_clause)?;
        planner.where_clause(select.where_clause.as_deref())?;
        let mut shardwise = Shardwise {
            nullable: vec![false; planner.relations.len()],
            planner,
            shards: Vec::new(),
        };
        let outer = select
            .from_clause
            .iter()
            .any(|n| has_outer_join(n.node.as_ref()));
        let mut next = 0;
        let mut any_sharded = false;
        for item in &select.from_clause {
            let (rows, _) = shardwise.item(item.node.as_ref(), &mut next, outer)?;
            any_sharded |= rows == Rows::Sharded;
        }
        if !any_sharded {
            return refuse("it reads no distributed table");
        }
        shardwise.place()?;
        Ok(shardwise)
    }

    /// The item's rows and the relations it brings, numbered as the planner met them.
    fn item(
        &mut self,
        item: Option<&NodeEnum>,
        next: &mut usize,
        outer: bool,
    ) -> Result<(Rows, Vec<usize>), NotRoutable> {
        match item {
            Some(NodeEnum::RangeVar(_)) => {
                let rel = *next;
                *next += 1;
                let rows = if self.planner.relations[rel].distributed {
                    Rows::Sharded
                } else {
                    Rows::Replicated
                };
                Ok((rows, vec![rel]))
            }
            Some(NodeEnum::JoinExpr(join)) => self.join(join, next, outer),
            _ => refuse("it reads something other than tables"),
        }
    }

    fn join(
        &mut self,
        join: &JoinExpr,
        next: &mut usize,
        outer: bool,
    ) -> Result<(Rows, Vec<usize>), NotRoutable> {
        let (left, left_rels) = self.item(
            join.larg.as_deref().and_then(|n| n.node.as_ref()),
            next,
            outer,
        )?;
        let (right, right_rels) = self.item(
            join.rarg.as_deref().and_then(|n| n.node.as_ref()),
            next,
            outer,
        )?;
        let kind = JoinType::try_from(join.jointype).unwrap_or(JoinType::Undefined);
        let (left_nullable, right_nullable) = match kind {
            JoinType::JoinInner => (false, false),
            JoinType::JoinLeft => (false, true),
            JoinType::JoinRight => (true, false),
            JoinType::JoinFull => (true, true),
            _ => return refuse("a join of a kind not split across shards"),
        };
        for (&rel, nullable) in left_rels
            .iter()
            .map(|r| (r, left_nullable))
            .chain(right_rels.iter().map(|r| (r, right_nullable)))
        {
            self.nullable[rel] |= nullable;
        }
        let rows = match (left, right) {
            (Rows::Replicated, Rows::Replicated) => Rows::Replicated,
            (Rows::Sharded, Rows::Replicated) if !left_nullable => Rows::Sharded,
            (Rows::Replicated, Rows::Sharded) if !right_nullable => Rows::Sharded,
            (Rows::Sharded, Rows::Sharded) => {
                if outer && !self.equates_keys(join, &left_rels, &right_rels) {
                    return refuse(
                        "an outer join whose ON does not equate the distribution columns",
                    );
                }
                Rows::Sharded
            }
            _ => {
                return refuse(
                    "an outer join that keeps every row of a reference table and reads \
                     distributed tables",
                )
            }
        };
        let scope = left_rels.into_iter().chain(right_rels).collect();
        Ok((rows, scope))
    }

    /// Whether the join's own condition equates a distribution column of each side.
    fn equates_keys(&self, join: &JoinExpr, left: &[usize], right: &[usize]) -> bool {
        let across = |a: usize, b: usize| {
            (left.contains(&a) && right.contains(&b)) || (left.contains(&b) && right.contains(&a))
        };
        let using = join.using_clause.iter().any(|column| {
            let Some(NodeEnum::String(name)) = &column.node else {
                return false;
            };
            let is_key = |rels: &[usize]| {
                self.planner
                    .only_with_column(rels, &name.sval)
                    .is_some_and(|r| self.key_name(r) == Some(name.sval.as_str()))
            };
            is_key(left) && is_key(right)
        });
        let scope: Vec<usize> = left.iter().chain(right).copied().collect();
        using
            || conjuncts(join.quals.as_deref()).into_iter().any(|c| {
                let NodeEnum::AExpr(expr) = c else {
                    return false;
                };
                let is_equals = expr.kind == AExprKind::AexprOp as i32
                    && matches!(expr.name.as_slice(),
                        [Node { node: Some(NodeEnum::String(op)) }] if op.sval == "=");
                let side = |n: &Option<Box<Node>>| {
                    self.planner
                        .key_column(n.as_deref().and_then(|n| n.node.as_ref()), &scope)
                };
                match (is_equals, side(&expr.lexpr), side(&expr.rexpr)) {
                    (true, Some(a), Some(b)) => across(a, b),
                    _ => false,
                }
            })
    }

    fn key_name(&self, rel: usize) -> Option<&str> {
        self.planner.relations[rel]
            .distribution
            .as_ref()
            .map(|(k, _)| k.as_str())
    }

    /// One colocation group, all keys equal, each shard index on one node.
    fn place(&mut self) -> Result<(), NotRoutable> {
        let topology = self.planner.topology;
        let distributed: Vec<usize> = (0..self.planner.relations.len())
            .filter(|&r| self.planner.relations[r].distributed)
            .collect();
        let roots: Vec<usize> = distributed.iter().map(|&r| self.planner.root(r)).collect();
        let distribution =
            |rel: usize| match &topology.tables[&self.planner.relations[rel].name].placement {
                Placement::Distributed(d) => d,
                _ => unreachable!("a distributed relation"),
            };
        let first = distribution(distributed[0]);
        for (&rel, &root) in distributed.iter().zip(&roots) {
            let d = distribution(rel);
            if d.colocation != first.colocation || d.shards.len() != first.shards.len() {
                return refuse("its distributed tables are in different colocation groups");
            }
            if first.shards.len() > 1 && root != roots[0] {
                return refuse(
                    "its distributed tables are not joined on their distribution columns",
                );
            }
        }
        for index in 0..first.shards.len() {
            let node = first.shards[index].node;
            let mut names = Vec::new();
            for relation in &self.planner.relations {
                match &topology.tables[&relation.name].placement {
                    Placement::Distributed(d) => {
                        let shard = &d.shards[index];
                        if shard.node != node {
                            return refuse(
                                "a shard group is split across nodes (a move is running)",
                            );
                        }
                        names.push(shard.table.clone());
                    }
                    Placement::Reference { replica } => names.push(replica.clone()),
                    Placement::Local => unreachable!("refused by the planner"),
                }
            }
            self.shards.push((node, names));
        }
        Ok(())
    }

    /// How many relations the FROM clause names.
    pub(crate) fn relation_count(&self) -> usize {
        self.planner.relations.len()
    }

    /// The tables read, for the caller's privilege check.
    pub(crate) fn tables(&self) -> Vec<QualifiedName> {
        let mut tables: Vec<QualifiedName> = self
            .planner
            .relations
            .iter()
            .map(|r| r.name.clone())
            .collect();
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        tables.dedup();
        tables
    }

    /// Shard indexes with their nodes.
    pub(crate) fn shard_nodes(&self) -> impl Iterator<Item = (usize, i32)> + '_ {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, (node, _))| (i, *node))
    }

    /// Whether `node` is the distribution column of a distributed table that is in every row
    /// (not NULL-extended by an outer join): each of its values then lives in one shard.
    pub(crate) fn is_row_key(&self, node: &Node) -> bool {
        let scope: Vec<usize> = (0..self.planner.relations.len()).collect();
        self.planner
            .key_column(node.node.as_ref(), &scope)
            .is_some_and(|rel| !self.nullable[rel])
    }

    /// `statement` (a SELECT with this FROM clause) for shard index `index`.
    pub(crate) fn for_shard(
        &self,
        statement: &NodeEnum,
        index: usize,
    ) -> Result<String, NotRoutable> {
        rewrite::rewrite(
            statement,
            &self.planner.relations,
            &self.shards[index].1,
            None,
        )
    }
}
