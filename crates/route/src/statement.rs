//! Which statements one shard group can answer, and that statement rewritten for its node.
//!
//! A statement goes to a node when every distributed table it names is pinned to one shard by
//! its distribution column (`col = constant`, `col = $n`, `col IN (...)` in WHERE, or equal to a
//! pinned colocated table's column through a join), all of them in one colocation group, with
//! reference tables only read (tables of a distributed schema, a group of one shard, need no
//! key). Everything else goes to the coordinator, with the reason: the
//! router never guesses. Planning ([`plan`]) looks at the text once; binding ([`Plan::bind`])
//! reads the parameters, picks the shard and writes the statement for it.

mod rewrite;
mod scan;
mod shardwise;
#[cfg(test)]
mod tests;

use pg_query::protobuf::{
    a_const, AExprKind, BoolExprType, ColumnRef, JoinExpr, JoinType, RangeVar, SelectStmt,
    SetOperation, TypeName,
};
use pg_query::{Node, NodeEnum};

use crate::topology::{Placement, Table, Topology};
use crate::{shard_index, KeyType, KeyValue};
pub(crate) use shardwise::Shardwise;
use shoal_sql::QualifiedName;

/// Why a statement goes to the coordinator (for logs and metrics, not an error to the user).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotRoutable(pub String);

fn refuse<T>(reason: impl Into<String>) -> Result<T, NotRoutable> {
    Err(NotRoutable(reason.into()))
}

/// A parameter as the client bound it.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Null,
    Text(&'a str),
    /// Binary, with the key type of the parameter's declared type when it is one.
    Binary {
        ty: Option<KeyType>,
        bytes: &'a [u8],
    },
}

/// Where a statement runs, and what it says there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub place: Place,
    /// The shard group: its colocation group (-1 on the coordinator) and shard index.
    pub colocation: i64,
    pub shard_index: u32,
    pub sql: String,
    /// For an INSERT that leaves columns out: shard tables keep no defaults, so the
    /// statement is right only while the router's view of the table is current (a column
    /// added with a default since it was read would get NULL); the caller checks that on
    /// the node, in the statement's transaction.
    pub guard: Option<Guard>,
}

/// The shard an INSERT writes and the node's tables version the router's view was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub shard: QualifiedName,
    pub version: i64,
}

/// A node by its id, or the coordinator for a statement that writes (or locks rows of)
/// reference tables only: their authoritative copies are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    Coordinator,
    Node(i32),
}

/// The privilege a statement needs on a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
}

impl Privilege {
    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
        }
    }
}

/// Where a key's value comes from, and the type it is read as (a cast's, else the column's).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Literal(Option<String>),
    Param(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    source: Source,
    read_as: KeyType,
}

/// A relation the statement names, in the order the rewrite meets them.
#[derive(Debug, Clone)]
struct Relation {
    name: QualifiedName,
    /// What the statement calls it: its alias, else its name.
    visible: String,
    has_alias: bool,
    columns: Vec<String>,
    distributed: bool,
    /// The distribution column and its type.
    distribution: Option<(String, KeyType)>,
}

/// A statement that a single shard group may answer, waiting for its parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    statement: NodeEnum,
    relations: Vec<Relation>,
    colocation: i64,
    shard_count: usize,
    /// Every key must land on the same shard.
    keys: Vec<Key>,
    /// Writes reference tables only: runs on the coordinator, names as they are.
    on_coordinator: bool,
    /// The relation an INSERT writes without naming all its columns.
    omits_columns: Option<usize>,
    /// The privileges the statement needs, checked for the client's role before it runs
    /// as Shoal's.
    accesses: Vec<(QualifiedName, Privilege)>,
}

/// Looks at `sql` once: `Ok` when its shard depends only on its keys.
pub fn plan(sql: &str, topology: &Topology) -> Result<Plan, NotRoutable> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| NotRoutable(format!("parse: {e}")))?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return refuse("it is not one statement");
    };
    let Some(statement) = raw.stmt.as_ref().and_then(|s| s.node.clone()) else {
        return refuse("it is empty");
    };
    let census = scan::scan(
        &serde_json::to_value(raw.stmt.as_deref()).unwrap_or_default(),
        topology,
    )?;
    let mut planner = Planner::new(topology);
    let mut write = None;
    let expected_selects = match &statement {
        NodeEnum::SelectStmt(select) => {
            check_select(select)?;
            planner.read_from_clause(&select.from_clause)?;
            planner.where_clause(select.where_clause.as_deref())?;
            1
        }
        NodeEnum::InsertStmt(insert) => {
            if insert.with_clause.is_some() {
                return refuse("it has a WITH clause");
            }
            let target = planner.target(insert.relation.as_ref())?;
            write = Some((target, Privilege::Insert));
            planner.insert_keys(target, insert)?;
            if let Some(conflict) = &insert.on_conflict_clause {
                planner.keeps_key(target, &conflict.target_list)?;
            }
            1
        }
        NodeEnum::UpdateStmt(update) => {
            if update.with_clause.is_some() {
                return refuse("it has a WITH clause");
            }
            let target = planner.target(update.relation.as_ref())?;
            write = Some((target, Privilege::Update));
            planner.keeps_key(target, &update.target_list)?;
            planner.read_from_clause(&update.from_clause)?;
            planner.where_clause(update.where_clause.as_deref())?;
            0
        }
        NodeEnum::DeleteStmt(delete) => {
            if delete.with_clause.is_some() {
                return refuse("it has a WITH clause");
            }
            let target = planner.target(delete.relation.as_ref())?;
            write = Some((target, Privilege::Delete));
            planner.read_from_clause(&delete.using_clause)?;
            planner.where_clause(delete.where_clause.as_deref())?;
            0
        }
        _ => return refuse("only SELECT, INSERT, UPDATE and DELETE go to a shard"),
    };
    if census.selects != expected_selects || census.relations != planner.relations.len() {
        return refuse("it nests queries");
    }
    let references = planner.relations.iter().any(|r| !r.distributed);
    let distributed = planner.relations.iter().any(|r| r.distributed);
    if census.locking && references && distributed {
        return refuse(
            "it locks rows of a reference table, whose authoritative copy is on the coordinator",
        );
    }
    // Every relation is read (SELECT is asked of a written table too, since WHERE, SET and
    // RETURNING usually read it; a role without it goes to the coordinator, which decides).
    let mut accesses: Vec<(QualifiedName, Privilege)> = planner
        .relations
        .iter()
        .map(|r| (r.name.clone(), Privilege::Select))
        .collect();
    if let Some((target, privilege)) = write {
        accesses.push((planner.relations[target].name.clone(), privilege));
    }
    accesses.dedup();
    let on_coordinator = !distributed && (planner.writes_reference || census.locking);
    let mut plan = planner.finish(statement, on_coordinator)?;
    plan.accesses = accesses;
    Ok(plan)
}

/// The whole-tree scan, for a statement split across shards: one SELECT over the `relations`
/// its FROM names, nothing nested, no row locks, only functions every node answers alike.
pub(crate) fn scan_for_scatter(
    statement: &serde_json::Value,
    topology: &Topology,
    relations: usize,
) -> Result<(), NotRoutable> {
    let census = scan::scan(statement, topology)?;
    if census.selects != 1 || census.relations != relations || census.locking {
        return refuse("it nests queries, reads several relations or locks rows");
    }
    Ok(())
}

fn check_select(select: &SelectStmt) -> Result<(), NotRoutable> {
    if select.op != SetOperation::SetopNone as i32 {
        return refuse("it combines queries (UNION, INTERSECT, EXCEPT)");
    }
    if select.with_clause.is_some() {
        return refuse("it has a WITH clause");
    }
    if !select.values_lists.is_empty() {
        return refuse("it is a VALUES list");
    }
    Ok(())
}

struct Planner<'a> {
    topology: &'a Topology,
    relations: Vec<Relation>,
    /// Union-find over relations: distributed relations whose keys are equal.
    classes: Vec<usize>,
    /// Keys with the relation they pin.
    keys: Vec<(usize, Key)>,
    writes_reference: bool,
    /// The relation an INSERT writes without naming all its columns.
    omits_columns: Option<usize>,
}

impl<'a> Planner<'a> {
    fn new(topology: &'a Topology) -> Planner<'a> {
        Planner {
            topology,
            relations: Vec::new(),
            classes: Vec::new(),
            keys: Vec::new(),
            writes_reference: false,
            omits_columns: None,
        }
    }

    /// Adds a relation; returns its index.
    fn relation(&mut self, range: &RangeVar) -> Result<usize, NotRoutable> {
        if !range.catalogname.is_empty() {
            return refuse("it names a relation with a database");
        }
        let Some((name, table)) = self.topology.resolve(&range.schemaname, &range.relname) else {
            return refuse(format!(
                "{} is not a table Shoal knows (a view, a temporary table?)",
                range.relname
            ));
        };
        let distribution = match &table.placement {
            Placement::Local => return refuse(format!("{name} is on the coordinator only")),
            Placement::Reference { .. } => None,
            Placement::Distributed(d) => d.key.clone(),
        };
        let distributed = matches!(table.placement, Placement::Distributed(_));
        let alias = range.alias.as_ref().map(|a| a.aliasname.clone());
        let index = self.relations.len();
        self.relations.push(Relation {
            visible: alias.clone().unwrap_or_else(|| range.relname.clone()),
            has_alias: alias.is_some(),
            name,
            columns: table.columns.clone(),
            distributed,
            distribution,
        });
        self.classes.push(index);
        Ok(index)
    }

    /// The relation an UPDATE, DELETE or INSERT writes: a distributed table, or a reference
    /// table (the statement then runs on the coordinator, if it names no distributed table).
    fn target(&mut self, range: Option<&RangeVar>) -> Result<usize, NotRoutable> {
        let range = range.ok_or_else(|| NotRoutable("it has no target".into()))?;
        let index = self.relation(range)?;
        if !self.relations[index].distributed {
            self.writes_reference = true;
        }
        Ok(index)
    }

    /// Refuses assignments to the distribution column: the row would belong to another shard,
    /// which only the coordinator's partitioning moves it to.
    fn keeps_key(&self, target: usize, assignments: &[Node]) -> Result<(), NotRoutable> {
        let Some((key, _)) = &self.relations[target].distribution else {
            return Ok(());
        };
        let assigns_key = assignments
            .iter()
            .any(|a| matches!(&a.node, Some(NodeEnum::ResTarget(t)) if &t.name == key));
        if assigns_key {
            return refuse(format!("it assigns the distribution column {key}"));
        }
        Ok(())
    }

    fn read_from_clause(&mut self, items: &[Node]) -> Result<(), NotRoutable> {
        let outer = items.iter().any(|n| has_outer_join(n.node.as_ref()));
        for item in items {
            self.read_from_item(item.node.as_ref(), outer)?;
        }
        Ok(())
    }

    /// Returns the relations the item brings into scope.
    fn read_from_item(
        &mut self,
        item: Option<&NodeEnum>,
        outer_joins: bool,
    ) -> Result<Vec<usize>, NotRoutable> {
        match item {
            Some(NodeEnum::RangeVar(range)) => Ok(vec![self.relation(range)?]),
            Some(NodeEnum::JoinExpr(join)) => self.join(join, outer_joins),
            _ => refuse("it reads something other than tables"),
        }
    }

    fn join(&mut self, join: &JoinExpr, outer_joins: bool) -> Result<Vec<usize>, NotRoutable> {
        if join.is_natural {
            return refuse("it has a NATURAL join");
        }
        let left = self.read_from_item(
            join.larg.as_deref().and_then(|n| n.node.as_ref()),
            outer_joins,
        )?;
        let right = self.read_from_item(
            join.rarg.as_deref().and_then(|n| n.node.as_ref()),
            outer_joins,
        )?;
        for column in &join.using_clause {
            let Some(NodeEnum::String(name)) = &column.node else {
                continue;
            };
            if let (Some(a), Some(b)) = (
                self.only_with_column(&left, &name.sval),
                self.only_with_column(&right, &name.sval),
            ) {
                self.equate_if_keys(a, &name.sval, b, &name.sval);
            }
        }
        let scope: Vec<usize> = left.iter().chain(&right).copied().collect();
        // A constant in an inner join's condition restricts the result like WHERE does, unless
        // the join sits under an outer join's nullable side; equalities of keys hold for every
        // row a join produces from both sides, whatever the join.
        let pins = join.jointype == JoinType::JoinInner as i32 && !outer_joins;
        for conjunct in conjuncts(join.quals.as_deref()) {
            self.conjunct(conjunct, &scope, pins);
        }
        Ok(scope)
    }

    fn where_clause(&mut self, clause: Option<&Node>) -> Result<(), NotRoutable> {
        let scope: Vec<usize> = (0..self.relations.len()).collect();
        for conjunct in conjuncts(clause) {
            self.conjunct(conjunct, &scope, true);
        }
        Ok(())
    }

    /// Learns what one conjunct says about keys: a pin (`key = constant`, `key IN (...)`) or
    /// an equality of two keys. Anything else says nothing (and filters rows on the shard).
    fn conjunct(&mut self, node: &NodeEnum, scope: &[usize], pins: bool) {
        let NodeEnum::AExpr(expr) = node else {
            return;
        };
        let is_equals = matches!(expr.name.as_slice(),
            [Node { node: Some(NodeEnum::String(op)) }] if op.sval == "=");
        if !is_equals {
            return;
        }
        let left = expr.lexpr.as_deref().and_then(|n| n.node.as_ref());
        let right = expr.rexpr.as_deref().and_then(|n| n.node.as_ref());
        if expr.kind == AExprKind::AexprOp as i32 {
            match (self.key_column(left, scope), self.key_column(right, scope)) {
                (Some(a), Some(b)) => {
                    let (ca, cb) = (self.key_of(a), self.key_of(b));
                    if let (Some((ca, _)), Some((cb, _))) = (ca, cb) {
                        self.equate_if_keys(a, &ca, b, &cb);
                    }
                }
                (Some(rel), None) if pins => self.pin(rel, &[right]),
                (None, Some(rel)) if pins => self.pin(rel, &[left]),
                _ => {}
            }
        } else if expr.kind == AExprKind::AexprIn as i32 && pins {
            if let (Some(rel), Some(NodeEnum::List(list))) = (self.key_column(left, scope), right) {
                let values: Vec<Option<&NodeEnum>> =
                    list.items.iter().map(|n| n.node.as_ref()).collect();
                self.pin(rel, &values);
            }
        }
    }

    fn key_of(&self, rel: usize) -> Option<(String, KeyType)> {
        self.relations[rel].distribution.clone()
    }

    /// The relation whose distribution column `node` names, if it names one.
    fn key_column(&self, node: Option<&NodeEnum>, scope: &[usize]) -> Option<usize> {
        let Some(NodeEnum::ColumnRef(column)) = node else {
            return None;
        };
        let (rel, name) = self.column(column, scope)?;
        let (key, _) = self.relations[rel].distribution.as_ref()?;
        (key == &name).then_some(rel)
    }

    /// Which relation in `scope` a column reference means, and the column's name.
    fn column(&self, column: &ColumnRef, scope: &[usize]) -> Option<(usize, String)> {
        let parts: Vec<&str> = column
            .fields
            .iter()
            .map(|f| match &f.node {
                Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        match parts.as_slice() {
            [qualifier, name] => {
                let mut matching = scope
                    .iter()
                    .filter(|&&r| self.relations[r].visible == *qualifier);
                let rel = *matching.next()?;
                matching.next().is_none().then(|| (rel, name.to_string()))
            }
            [name] => Some((self.unqualified(scope, name)?, name.to_string())),
            _ => None,
        }
    }

    /// The relation an unqualified column means: the only one with that column, or any of the
    /// key-equal relations a `USING (key)` merged the column of.
    fn unqualified(&self, scope: &[usize], name: &str) -> Option<usize> {
        let having: Vec<usize> = scope
            .iter()
            .copied()
            .filter(|&r| self.relations[r].columns.iter().any(|c| c == name))
            .collect();
        let first = *having.first()?;
        let merged_key = having.iter().all(|&r| {
            self.relations[r]
                .distribution
                .as_ref()
                .is_some_and(|(key, _)| key == name)
                && self.find(r) == self.find(first)
        });
        (having.len() == 1 || merged_key).then_some(first)
    }

    fn find(&self, mut rel: usize) -> usize {
        while self.classes[rel] != rel {
            rel = self.classes[rel];
        }
        rel
    }

    fn only_with_column(&self, scope: &[usize], name: &str) -> Option<usize> {
        let mut having = scope
            .iter()
            .filter(|&&r| self.relations[r].columns.iter().any(|c| c == name));
        let rel = *having.next()?;
        having.next().is_none().then_some(rel)
    }

    fn equate_if_keys(&mut self, a: usize, column_a: &str, b: usize, column_b: &str) {
        let is_key = |rel: &Relation, column: &str| {
            rel.distribution
                .as_ref()
                .is_some_and(|(key, _)| key == column)
        };
        if is_key(&self.relations[a], column_a) && is_key(&self.relations[b], column_b) {
            let (ra, rb) = (self.root(a), self.root(b));
            self.classes[ra] = rb;
        }
    }

    fn root(&mut self, mut rel: usize) -> usize {
        while self.classes[rel] != rel {
            self.classes[rel] = self.classes[self.classes[rel]];
            rel = self.classes[rel];
        }
        rel
    }

    /// Pins `rel` to the shard of every one of `values`; a value that is not a constant or a
    /// parameter pins nothing (the whole conjunct then says nothing).
    fn pin(&mut self, rel: usize, values: &[Option<&NodeEnum>]) {
        let Some((_, column_type)) = self.key_of(rel) else {
            return;
        };
        let keys: Option<Vec<Key>> = values.iter().map(|v| key_source(*v, column_type)).collect();
        if let Some(keys) = keys.filter(|k| !k.is_empty()) {
            self.keys.extend(keys.into_iter().map(|k| (rel, k)));
        }
    }

    fn insert_keys(
        &mut self,
        target: usize,
        insert: &pg_query::protobuf::InsertStmt,
    ) -> Result<(), NotRoutable> {
        let relation = self.relations[target].clone();
        let table: &Table = &self.topology.tables[&relation.name];
        // A reference table is written where it is authoritative, defaults and all.
        let with_defaults: &[String] = if relation.distributed {
            &table.with_defaults
        } else {
            &[]
        };
        let columns: Vec<String> = if insert.cols.is_empty() {
            relation.columns.clone()
        } else {
            insert
                .cols
                .iter()
                .map(|c| match &c.node {
                    Some(NodeEnum::ResTarget(t)) if t.indirection.is_empty() => Ok(t.name.clone()),
                    _ => refuse("it assigns into parts of columns"),
                })
                .collect::<Result<_, _>>()?
        };
        if relation.columns.iter().any(|c| !columns.contains(c)) {
            self.omits_columns = Some(target);
        }
        if let Some(missing) = with_defaults.iter().find(|c| !columns.contains(c)) {
            return refuse(format!(
                "column {missing} takes the coordinator's default (shard tables have none)"
            ));
        }
        let Some(NodeEnum::SelectStmt(values)) =
            insert.select_stmt.as_deref().and_then(|s| s.node.as_ref())
        else {
            return refuse("it inserts DEFAULT VALUES");
        };
        if values.values_lists.is_empty() {
            return refuse("it inserts the result of a query");
        }
        let Some((key, key_type)) = relation.distribution.clone() else {
            return Ok(());
        };
        let position = columns.iter().position(|c| c == &key).ok_or_else(|| {
            NotRoutable(format!(
                "it gives no value for the distribution column {key}"
            ))
        })?;
        for row in &values.values_lists {
            let Some(NodeEnum::List(row)) = &row.node else {
                return refuse("it has an unreadable VALUES row");
            };
            let value = row.items.get(position).and_then(|n| n.node.as_ref());
            let key = key_source(value, key_type).ok_or_else(|| {
                NotRoutable(format!(
                    "its value for {key} is not a constant or a parameter"
                ))
            })?;
            self.keys.push((target, key));
        }
        Ok(())
    }

    fn finish(mut self, statement: NodeEnum, on_coordinator: bool) -> Result<Plan, NotRoutable> {
        let distributed: Vec<usize> = (0..self.relations.len())
            .filter(|&r| self.relations[r].distributed)
            .collect();
        if on_coordinator {
            return Ok(Plan {
                statement,
                relations: self.relations,
                colocation: -1,
                shard_count: 0,
                keys: Vec::new(),
                on_coordinator: true,
                omits_columns: None,
                accesses: Vec::new(),
            });
        }
        if distributed.is_empty() {
            return refuse("it names no distributed table");
        }
        if self.writes_reference {
            return refuse(
                "it writes a reference table, whose authoritative copy is on the coordinator, \
                 and reads distributed tables",
            );
        }
        let mut colocations = distributed.iter().map(|&r| {
            match &self.topology.tables[&self.relations[r].name].placement {
                Placement::Distributed(d) => (d.colocation, d.shards.len()),
                _ => unreachable!("a distributed relation"),
            }
        });
        let (colocation, shard_count) = colocations.next().expect("one at least");
        if colocations.any(|c| c.0 != colocation) {
            return refuse("its distributed tables are in different colocation groups");
        }
        let pinned: Vec<usize> = self.keys.iter().map(|(r, _)| *r).collect();
        let pinned_roots: Vec<usize> = pinned.iter().map(|&r| self.root(r)).collect();
        // A group of one shard (a distributed schema's tables) needs no key: it is all there.
        let single = shard_count == 1;
        for &rel in distributed.iter().filter(|_| !single) {
            let root = self.root(rel);
            if !pinned_roots.contains(&root) {
                return refuse(format!(
                    "{} is not pinned to one shard by its distribution column",
                    self.relations[rel].visible
                ));
            }
        }
        Ok(Plan {
            statement,
            relations: self.relations,
            colocation,
            shard_count,
            keys: self.keys.into_iter().map(|(_, k)| k).collect(),
            on_coordinator: false,
            omits_columns: self.omits_columns,
            accesses: Vec::new(),
        })
    }
}

/// The conjuncts of a condition: its top-level ANDs taken apart.
fn conjuncts(node: Option<&Node>) -> Vec<&NodeEnum> {
    let mut out = Vec::new();
    let mut stack: Vec<&NodeEnum> = node.and_then(|n| n.node.as_ref()).into_iter().collect();
    while let Some(node) = stack.pop() {
        match node {
            NodeEnum::BoolExpr(b) if b.boolop == BoolExprType::AndExpr as i32 => {
                stack.extend(b.args.iter().filter_map(|a| a.node.as_ref()));
            }
            other => out.push(other),
        }
    }
    out
}

fn has_outer_join(node: Option<&NodeEnum>) -> bool {
    match node {
        Some(NodeEnum::JoinExpr(join)) => {
            join.jointype != JoinType::JoinInner as i32
                || has_outer_join(join.larg.as_deref().and_then(|n| n.node.as_ref()))
                || has_outer_join(join.rarg.as_deref().and_then(|n| n.node.as_ref()))
        }
        _ => false,
    }
}

/// A constant, a parameter, or either cast to a type that compares with the column's as it
/// hashes: the key it is.
fn key_source(node: Option<&NodeEnum>, column: KeyType) -> Option<Key> {
    match node? {
        NodeEnum::AConst(constant) => {
            let text = if constant.isnull {
                None
            } else {
                Some(match constant.val.as_ref()? {
                    a_const::Val::Ival(i) => i.ival.to_string(),
                    a_const::Val::Fval(f) => f.fval.clone(),
                    a_const::Val::Sval(s) => s.sval.clone(),
                    a_const::Val::Boolval(b) => if b.boolval { "t" } else { "f" }.to_string(),
                    a_const::Val::Bsval(_) => return None,
                })
            };
            Some(Key {
                source: Source::Literal(text),
                read_as: column,
            })
        }
        NodeEnum::ParamRef(param) if param.number > 0 => Some(Key {
            source: Source::Param(param.number as usize - 1),
            read_as: column,
        }),
        NodeEnum::TypeCast(cast) => {
            let to = cast_type(cast.type_name.as_ref()?)?;
            if !compares_as_hashed(column, to) {
                return None;
            }
            let inner = key_source(cast.arg.as_deref().and_then(|n| n.node.as_ref()), to)?;
            Some(Key {
                read_as: to,
                ..inner
            })
        }
        _ => None,
    }
}

/// Whether a value of type `other` equal to a column value of type `column` hashes as it:
/// the same type, or integers of any width (their hashes agree by design).
fn compares_as_hashed(column: KeyType, other: KeyType) -> bool {
    use KeyType::{Int2, Int4, Int8};
    column == other || matches!((column, other), (Int2 | Int4 | Int8, Int2 | Int4 | Int8))
}

fn cast_type(type_name: &TypeName) -> Option<KeyType> {
    if !type_name.array_bounds.is_empty() {
        return None;
    }
    let names: Vec<&str> = type_name
        .names
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    let name = match names.as_slice() {
        ["pg_catalog", name] | [name] => *name,
        _ => return None,
    };
    Some(match name {
        "int2" | "smallint" => KeyType::Int2,
        "int4" | "integer" | "int" => KeyType::Int4,
        "int8" | "bigint" => KeyType::Int8,
        "bool" | "boolean" => KeyType::Bool,
        "text" | "varchar" => KeyType::Text,
        "bpchar" => KeyType::Bpchar,
        "uuid" => KeyType::Uuid,
        "bytea" => KeyType::Bytea,
        "oid" => KeyType::Oid,
        "date" => KeyType::Date,
        "timestamp" | "timestamptz" => KeyType::Timestamp,
        _ => return None,
    })
}

impl Plan {
    /// The shard the keys pick with these parameters, and the statement for its node. `Err`
    /// when a key cannot be read here, the keys disagree, or the topology changed under the
    /// plan (plan again).
    pub fn bind(&self, params: &[Param<'_>], topology: &Topology) -> Result<Target, NotRoutable> {
        if self.on_coordinator {
            let names: Vec<QualifiedName> = self.relations.iter().map(|r| r.name.clone()).collect();
            return Ok(Target {
                place: Place::Coordinator,
                colocation: -1,
                shard_index: 0,
                sql: rewrite::rewrite(&self.statement, &self.relations, &names, None)?,
                guard: None,
            });
        }
        let mut index = None;
        for key in &self.keys {
            let value = match &key.source {
                Source::Literal(None) => KeyValue::Null,
                Source::Literal(Some(text)) => key.read_as.read_text(text).map_err(reason)?,
                Source::Param(n) => match params.get(*n) {
                    None => return refuse(format!("parameter ${} is missing", n + 1)),
                    Some(Param::Null) => KeyValue::Null,
                    Some(Param::Text(text)) => key.read_as.read_text(text).map_err(reason)?,
                    Some(Param::Binary { ty, bytes }) => match ty {
                        Some(ty) if compares_as_hashed(key.read_as, *ty) => {
                            ty.read_binary(bytes).map_err(reason)?
                        }
                        _ => return refuse(format!("parameter ${} has another type", n + 1)),
                    },
                },
            };
            let shard = shard_index(&value, self.shard_count as u32);
            if index.is_some_and(|i| i != shard) {
                return refuse("its keys are in different shards");
            }
            index = Some(shard);
        }
        let index = index.unwrap_or(0);
        let mut names = Vec::with_capacity(self.relations.len());
        // The first relation is the one a write writes.
        let mut written_shard = None;
        let mut node = None;
        for relation in &self.relations {
            let placed = topology.tables.get(&relation.name).map(|t| &t.placement);
            let name = match placed {
                Some(Placement::Reference { replica }) if !relation.distributed => replica.clone(),
                Some(Placement::Distributed(d))
                    if d.colocation == self.colocation && d.shards.len() == self.shard_count =>
                {
                    let shard = &d.shards[index as usize];
                    if node.is_some_and(|n| n != shard.node) {
                        return refuse("its shards are on different nodes (a move is finishing)");
                    }
                    node = Some(shard.node);
                    if names.is_empty() {
                        written_shard = Some(shard.shard_id);
                    }
                    shard.table.clone()
                }
                _ => return refuse("the tables changed since the statement was planned"),
            };
            names.push(name);
        }
        let sql = rewrite::rewrite(&self.statement, &self.relations, &names, written_shard)?;
        let node = node.expect("a plan has a distributed table");
        let guard = match self.omits_columns {
            None => None,
            Some(r) => match topology.node_versions.get(&node) {
                Some(version) => Some(Guard {
                    shard: names[r].clone(),
                    version: *version,
                }),
                None => {
                    return refuse("it leaves columns out and its node's tables version is unknown")
                }
            },
        };
        Ok(Target {
            place: Place::Node(node),
            colocation: self.colocation,
            shard_index: index,
            sql,
            guard,
        })
    }

    /// The privileges the statement needs, relation by relation.
    pub fn accesses(&self) -> &[(QualifiedName, Privilege)] {
        &self.accesses
    }

    /// Whether it reads a reference table on a node (its replica there lags the coordinator's
    /// uncommitted writes).
    pub fn reads_reference_replica(&self) -> bool {
        !self.on_coordinator && self.relations.iter().any(|r| !r.distributed)
    }

    /// Whether it writes (or locks) reference tables on the coordinator.
    pub fn writes_reference(&self) -> bool {
        self.on_coordinator
    }
}

fn reason(error: crate::KeyError) -> NotRoutable {
    NotRoutable(error.to_string())
}
