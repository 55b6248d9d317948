//! `shoal ddl`'s planner: which statements the coordinator takes as they are (its event
//! triggers then carry them to the shards), and, for the ones PostgreSQL refuses on a
//! partitioned table over foreign tables (unique constraints, primary and foreign keys, unique
//! indexes, `CONCURRENTLY`), the statement each shard runs instead. Pure: statements come
//! parsed by PostgreSQL's own parser (`pg_query`), tables come resolved by the caller, and each
//! shard's statement is the user's statement with its names rewritten, deparsed, so every
//! clause the user wrote (INCLUDE, WHERE, DEFERRABLE, ON DELETE ...) reaches the shard.

use pg_query::protobuf::{
    AlterTableCmd, AlterTableStmt, AlterTableType, ConstrType, Constraint, DropStmt, IndexStmt,
    ObjectType, RangeVar,
};
use pg_query::{Node, NodeEnum};

use crate::definition::{shard_object_name, ConstraintKind, TableDef};
use crate::naming::{choose_name, columns_addition};
use shoal_catalog::model::TableKind;
use shoal_sql::{quote_ident, QualifiedName};

/// A relation as a statement names it: schema (when given) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedRelation {
    pub schema: Option<String>,
    pub name: String,
}

impl NamedRelation {
    fn of(range: &RangeVar) -> NamedRelation {
        NamedRelation {
            schema: (!range.schemaname.is_empty()).then(|| range.schemaname.clone()),
            name: range.relname.clone(),
        }
    }

    /// As SQL text, for `to_regclass`.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

/// A managed table, as far as planning needs it.
#[derive(Debug, Clone)]
pub struct Managed {
    pub table_id: i32,
    pub relid: u32,
    pub kind: TableKind,
    pub colocation_id: i32,
    pub name: QualifiedName,
    pub distribution_column: Option<String>,
    /// The catalog's record of the shards' definition.
    pub record: TableDef,
    /// In shard index order.
    pub shards: Vec<Shard>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub shard_id: i64,
    pub index: i32,
    pub table: QualifiedName,
    pub node_id: i32,
}

/// One statement of a `shoal ddl` script.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The statement's own text.
    pub text: String,
    pub node: NodeEnum,
}

/// Splits a script into statements with PostgreSQL's parser.
pub fn parse(sql: &str) -> Result<Vec<Parsed>, Refusal> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| Refusal(format!("{e}")))?;
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.clone()) else {
            continue;
        };
        let start = usize::try_from(raw.stmt_location).unwrap_or(0);
        let text = if raw.stmt_len == 0 {
            &sql[start..]
        } else {
            &sql[start..start + raw.stmt_len as usize]
        };
        out.push(Parsed {
            text: text.trim().trim_end_matches(';').trim().to_string(),
            node,
        });
    }
    Ok(out)
}

/// A script's own transaction control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Begin,
    Commit,
    Rollback,
    /// Savepoints and two-phase commit, which a script run by `shoal ddl` cannot use.
    Other,
}

pub fn transaction_control(node: &NodeEnum) -> Option<Control> {
    use pg_query::protobuf::TransactionStmtKind as Kind;
    let NodeEnum::TransactionStmt(stmt) = node else {
        return None;
    };
    Some(match stmt.kind {
        k if k == Kind::TransStmtBegin as i32 || k == Kind::TransStmtStart as i32 => Control::Begin,
        k if k == Kind::TransStmtCommit as i32 => Control::Commit,
        k if k == Kind::TransStmtRollback as i32 => Control::Rollback,
        _ => Control::Other,
    })
}

/// Why a statement cannot run, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The relations a statement's plan depends on: its table, a foreign key's referenced table,
/// and (for DROP INDEX) the indexes, which the caller resolves to their tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    pub tables: Vec<NamedRelation>,
    pub indexes: Vec<NamedRelation>,
}

pub fn names(node: &NodeEnum) -> Names {
    let mut names = Names::default();
    match node {
        NodeEnum::AlterTableStmt(stmt) => {
            if let Some(relation) = &stmt.relation {
                names.tables.push(NamedRelation::of(relation));
            }
            for constraint in stmt.cmds.iter().filter_map(added_constraint) {
                if let Some(pktable) = &constraint.pktable {
                    names.tables.push(NamedRelation::of(pktable));
                }
            }
        }
        NodeEnum::IndexStmt(stmt) => {
            if let Some(relation) = &stmt.relation {
                names.tables.push(NamedRelation::of(relation));
            }
        }
        NodeEnum::DropStmt(stmt) if stmt.remove_type == ObjectType::ObjectIndex as i32 => {
            names.indexes = drop_objects(stmt);
        }
        _ => {}
    }
    names
}

fn added_constraint(cmd: &Node) -> Option<&Constraint> {
    let Some(NodeEnum::AlterTableCmd(cmd)) = &cmd.node else {
        return None;
    };
    if cmd.subtype != AlterTableType::AtAddConstraint as i32 {
        return None;
    }
    match cmd.def.as_deref().and_then(|d| d.node.as_ref()) {
        Some(NodeEnum::Constraint(c)) => Some(c),
        _ => None,
    }
}

fn drop_objects(stmt: &DropStmt) -> Vec<NamedRelation> {
    stmt.objects
        .iter()
        .filter_map(|object| match &object.node {
            Some(NodeEnum::List(list)) => {
                let parts: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|item| match &item.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                        _ => None,
                    })
                    .collect();
                match parts.as_slice() {
                    [name] => Some(NamedRelation {
                        schema: None,
                        name: name.clone(),
                    }),
                    [schema, name] => Some(NamedRelation {
                        schema: Some(schema.clone()),
                        name: name.clone(),
                    }),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// What a statement the coordinator takes changes, for carrying it to the shards by hand when
/// the coordinator's event triggers are not installed (a role that may not create them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Relations changed in place: tables, or indexes (their tables are what changed).
    pub relations: Vec<NamedRelation>,
    pub dropped_tables: Vec<NamedRelation>,
    pub dropped_schemas: Vec<String>,
    pub created_table: Option<NamedRelation>,
}

pub fn changes(node: &NodeEnum) -> Changes {
    let mut changes = Changes::default();
    let mut relation = |range: &Option<RangeVar>| {
        if let Some(range) = range {
            changes.relations.push(NamedRelation::of(range));
        }
    };
    match node {
        NodeEnum::AlterTableStmt(stmt) => relation(&stmt.relation),
        NodeEnum::RenameStmt(stmt) => relation(&stmt.relation),
        NodeEnum::AlterObjectSchemaStmt(stmt) => relation(&stmt.relation),
        NodeEnum::IndexStmt(stmt) => relation(&stmt.relation),
        NodeEnum::CreateStmt(stmt) => {
            changes.created_table = stmt.relation.as_ref().map(NamedRelation::of);
        }
        NodeEnum::CreateTableAsStmt(stmt) => {
            changes.created_table = stmt
                .into
                .as_ref()
                .and_then(|into| into.rel.as_ref())
                .map(NamedRelation::of);
        }
        NodeEnum::DropStmt(stmt) => {
            let kind = stmt.remove_type;
            if kind == ObjectType::ObjectIndex as i32 {
                changes.relations = drop_objects(stmt);
            } else if kind == ObjectType::ObjectTable as i32
                || kind == ObjectType::ObjectForeignTable as i32
            {
                changes.dropped_tables = drop_objects(stmt);
            } else if kind == ObjectType::ObjectSchema as i32 {
                changes.dropped_schemas = stmt
                    .objects
                    .iter()
                    .filter_map(|o| match &o.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                        _ => None,
                    })
                    .collect();
            }
        }
        _ => {}
    }
    changes
}

/// How a statement is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The coordinator takes it as written; its event triggers carry it to the shards.
    Coordinator,
    /// Statements for the shards, run inside the coordinator's transaction.
    Shards(ShardWork),
    /// Built shard by shard outside any transaction (`CONCURRENTLY`), then recorded.
    Concurrently(ShardWork),
    /// A column's type changed with USING: on the shards first, then on the coordinator with
    /// its foreign tables set aside.
    Retype(Retype),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retype {
    pub table_id: i32,
    pub column: String,
    pub statements: Vec<(Shard, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardWork {
    pub table_id: i32,
    /// Run on the coordinator first (and carried to the shards by its triggers): the NOT NULL
    /// a primary key implies, which the coordinator's columns must show too.
    pub coordinator_before: Vec<String>,
    pub statements: Vec<(Shard, String)>,
    /// Run on the coordinator once the shards have it: the plain index over the shards'
    /// indexes of CREATE INDEX CONCURRENTLY, the coordinator's half of DROP INDEX CONCURRENTLY.
    pub coordinator_after: Option<String>,
    pub change: RecordChange,
    /// What removes a concurrent build from the shards that got it, if the build fails.
    pub undo: Vec<(Shard, String)>,
}

/// What a shard-only change does to the catalog's record of the table; the definitions
/// themselves are read back from a shard once it has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordChange {
    /// A constraint with this name, pointing at `referenced` if it is a foreign key.
    AddConstraint {
        name: String,
        referenced: Option<(u32, QualifiedName)>,
    },
    DropConstraints(Vec<String>),
    /// A constraint whose definition changed on the shards (validated).
    RefreshConstraint(String),
    AddIndex(String),
    DropIndexes(Vec<String>),
    /// The coordinator's own statement records it (a plain index).
    ByCoordinator,
}

/// Plans one statement. `table` is the managed table it changes (None: not a managed table,
/// so the coordinator takes it), `referenced` the managed table a foreign key points at.
pub fn route(
    node: &NodeEnum,
    table: Option<&Managed>,
    referenced: Option<&Managed>,
    dropped: &[(Managed, String)],
) -> Result<Route, Refusal> {
    match node {
        NodeEnum::AlterTableStmt(stmt) => match table {
            Some(table) if table.kind != TableKind::Reference => {
                route_alter(stmt, table, referenced)
            }
            _ => Ok(Route::Coordinator),
        },
        NodeEnum::IndexStmt(stmt) => match table {
            Some(table) if table.kind != TableKind::Reference => route_index(stmt, table),
            Some(_) if stmt.concurrent => Err(Refusal(
                "CREATE INDEX CONCURRENTLY on a reference table: run it on the coordinator \
                 directly (psql); its replicas get the index with it"
                    .into(),
            )),
            _ => Ok(Route::Coordinator),
        },
        NodeEnum::DropStmt(stmt) if stmt.remove_type == ObjectType::ObjectIndex as i32 => {
            route_drop_index(stmt, dropped)
        }
        _ => Ok(Route::Coordinator),
    }
}

/// The statement with its relation renamed to a shard's.
fn deparse(node: NodeEnum) -> Result<String, Refusal> {
    node.deparse(Default::default())
        .map_err(|e| Refusal(format!("could not write the shards' statement: {e}")))
}

fn shard_range(original: &RangeVar, shard: &QualifiedName) -> RangeVar {
    RangeVar {
        schemaname: shard.schema.clone(),
        relname: shard.name.clone(),
        ..original.clone()
    }
}

fn taken_name(table: &Managed, name: &str) -> bool {
    table.record.constraints.iter().any(|c| c.name == name)
        || table.record.indexes.iter().any(|i| i.name == name)
}

fn shard_only_constraint(table: &Managed, name: &str) -> bool {
    table
        .record
        .constraints
        .iter()
        .any(|c| c.name == name && c.kind != ConstraintKind::Check)
}

fn route_alter(
    stmt: &AlterTableStmt,
    table: &Managed,
    referenced: Option<&Managed>,
) -> Result<Route, Refusal> {
    let mut shard_cmds = Vec::new();
    let mut retype = None;
    let mut others = 0;
    for node in &stmt.cmds {
        let Some(NodeEnum::AlterTableCmd(cmd)) = &node.node else {
            continue;
        };
        let subtype = cmd.subtype;
        let shard_only = if subtype == AlterTableType::AtAddConstraint as i32 {
            added_constraint(node).is_some_and(|c| {
                [
                    ConstrType::ConstrPrimary,
                    ConstrType::ConstrUnique,
                    ConstrType::ConstrForeign,
                    ConstrType::ConstrExclusion,
                ]
                .iter()
                .any(|t| *t as i32 == c.contype)
            })
        } else if subtype == AlterTableType::AtDropConstraint as i32
            || subtype == AlterTableType::AtValidateConstraint as i32
        {
            shard_only_constraint(table, &cmd.name)
        } else if subtype == AlterTableType::AtAddColumn as i32 {
            if column_has_shard_only_constraint(cmd) {
                return Err(Refusal(format!(
                    "a column added to distributed table {} cannot carry a unique, primary key \
                     or foreign key constraint in the same clause; add the column, then the \
                     constraint with ALTER TABLE ... ADD CONSTRAINT",
                    table.name
                )));
            }
            false
        } else if subtype == AlterTableType::AtAlterColumnType as i32 {
            if column_type_has_using(cmd) {
                retype = Some(cmd.clone());
            }
            false
        } else {
            false
        };
        if shard_only {
            shard_cmds.push(cmd.clone());
        } else {
            others += 1;
        }
    }
    if let Some(cmd) = retype {
        if others > 1 || !shard_cmds.is_empty() {
            return Err(Refusal(format!(
                "give ALTER COLUMN ... TYPE ... USING on distributed table {} a statement of \
                 its own",
                table.name
            )));
        }
        return route_retype(stmt, &cmd, table);
    }
    if shard_cmds.is_empty() {
        return Ok(Route::Coordinator);
    }
    if others > 0 || shard_cmds.len() > 1 {
        return Err(Refusal(format!(
            "split this ALTER TABLE of {} into one statement per constraint: its unique, \
             primary key and foreign key constraints live on the shards and are changed there \
             one at a time",
            table.name
        )));
    }
    let cmd = shard_cmds.remove(0);
    let relation = stmt
        .relation
        .as_ref()
        .ok_or_else(|| Refusal("ALTER TABLE names no table".into()))?;
    if cmd.subtype == AlterTableType::AtAddConstraint as i32 {
        let Some(Node {
            node: Some(NodeEnum::Constraint(constraint)),
        }) = cmd.def.as_deref()
        else {
            return Err(Refusal("ADD CONSTRAINT without a constraint".into()));
        };
        return route_add_constraint(stmt, &cmd, constraint, relation, table, referenced);
    }
    // DROP or VALIDATE of a constraint only the shards hold.
    let name = cmd.name.clone();
    if cmd.subtype == AlterTableType::AtDropConstraint as i32
        && cmd.behavior == pg_query::protobuf::DropBehavior::DropCascade as i32
    {
        return Err(Refusal(format!(
            "DROP CONSTRAINT ... CASCADE of {name} on distributed table {}: drop the foreign \
             keys that depend on it first, then the constraint without CASCADE",
            table.name
        )));
    }
    let statements = per_shard(table, |shard| {
        let mut shard_cmd = cmd.clone();
        shard_cmd.name = shard_object_name(&name, shard.shard_id);
        NodeEnum::AlterTableStmt(AlterTableStmt {
            relation: Some(shard_range(relation, &shard.table)),
            cmds: vec![Node {
                node: Some(NodeEnum::AlterTableCmd(shard_cmd)),
            }],
            ..stmt.clone()
        })
    })?;
    let change = if cmd.subtype == AlterTableType::AtDropConstraint as i32 {
        RecordChange::DropConstraints(vec![name])
    } else {
        RecordChange::RefreshConstraint(name)
    };
    Ok(Route::Shards(ShardWork {
        table_id: table.table_id,
        coordinator_before: Vec::new(),
        statements,
        coordinator_after: None,
        change,
        undo: Vec::new(),
    }))
}

/// ALTER COLUMN ... TYPE ... USING: PostgreSQL refuses USING over foreign tables, so the
/// shards convert their rows with the user's expression, and the coordinator's relations take
/// the new type with the foreign tables set aside.
fn route_retype(
    stmt: &AlterTableStmt,
    cmd: &AlterTableCmd,
    table: &Managed,
) -> Result<Route, Refusal> {
    if table.distribution_column.as_deref() == Some(cmd.name.as_str()) {
        return Err(Refusal(format!(
            "the type of {}'s distribution column {} cannot change: its rows' shards depend on it",
            table.name,
            quote_ident(&cmd.name)
        )));
    }
    let relation = stmt
        .relation
        .as_ref()
        .ok_or_else(|| Refusal("ALTER TABLE names no table".into()))?;
    let statements = per_shard(table, |shard| {
        NodeEnum::AlterTableStmt(AlterTableStmt {
            relation: Some(shard_range(relation, &shard.table)),
            ..stmt.clone()
        })
    })?;
    Ok(Route::Retype(Retype {
        table_id: table.table_id,
        column: cmd.name.clone(),
        statements,
    }))
}

fn column_has_shard_only_constraint(cmd: &AlterTableCmd) -> bool {
    let Some(NodeEnum::ColumnDef(column)) = cmd.def.as_deref().and_then(|d| d.node.as_ref()) else {
        return false;
    };
    column.constraints.iter().any(|c| {
        matches!(&c.node, Some(NodeEnum::Constraint(c)) if
            c.contype == ConstrType::ConstrPrimary as i32
            || c.contype == ConstrType::ConstrUnique as i32
            || c.contype == ConstrType::ConstrForeign as i32)
    })
}

fn column_type_has_using(cmd: &AlterTableCmd) -> bool {
    matches!(cmd.def.as_deref().and_then(|d| d.node.as_ref()),
        Some(NodeEnum::ColumnDef(column)) if column.raw_default.is_some())
}

fn string_list(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

fn string_nodes(names: &[String]) -> Vec<Node> {
    names
        .iter()
        .map(|name| Node {
            node: Some(NodeEnum::String(pg_query::protobuf::String {
                sval: name.clone(),
            })),
        })
        .collect()
}

fn per_shard(
    table: &Managed,
    statement: impl Fn(&Shard) -> NodeEnum,
) -> Result<Vec<(Shard, String)>, Refusal> {
    table
        .shards
        .iter()
        .map(|shard| Ok((shard.clone(), deparse(statement(shard))?)))
        .collect()
}

fn route_add_constraint(
    stmt: &AlterTableStmt,
    cmd: &AlterTableCmd,
    constraint: &Constraint,
    relation: &RangeVar,
    table: &Managed,
    referenced: Option<&Managed>,
) -> Result<Route, Refusal> {
    let foreign = constraint.contype == ConstrType::ConstrForeign as i32;
    let columns = if foreign {
        string_list(&constraint.fk_attrs)
    } else {
        string_list(&constraint.keys)
    };
    if !constraint.indexname.is_empty() {
        return Err(Refusal(format!(
            "ADD CONSTRAINT ... USING INDEX on distributed table {}: add the constraint with \
             its columns instead",
            table.name
        )));
    }
    if constraint.contype == ConstrType::ConstrExclusion as i32 && table.kind == TableKind::Hash {
        return Err(Refusal(format!(
            "exclusion constraints on hash-distributed table {} cannot be checked across shards",
            table.name
        )));
    }
    if !foreign && table.kind == TableKind::Hash {
        let column = table.distribution_column.as_deref().unwrap_or_default();
        if !columns.iter().any(|c| c == column) {
            return Err(Refusal(format!(
                "a unique constraint or primary key of {} must include its distribution column \
                 {}: each shard can only enforce uniqueness among its own rows",
                table.name,
                quote_ident(column)
            )));
        }
    }
    let label = if foreign {
        "fkey"
    } else if constraint.contype == ConstrType::ConstrPrimary as i32 {
        "pkey"
    } else if constraint.contype == ConstrType::ConstrUnique as i32 {
        "key"
    } else {
        "excl"
    };
    let name = if constraint.conname.is_empty() {
        let addition = (label != "pkey").then(|| columns_addition(&columns));
        choose_name(&table.name.name, addition.as_deref(), label, |n| {
            taken_name(table, n)
        })
    } else {
        constraint.conname.clone()
    };
    if taken_name(table, &name) {
        return Err(Refusal(format!(
            "relation {} already has a constraint or index named {}",
            table.name,
            quote_ident(&name)
        )));
    }
    let target = if foreign {
        Some(foreign_key_target(constraint, &columns, table, referenced)?)
    } else {
        None
    };
    let statements = per_shard(table, |shard| {
        let mut shard_constraint = constraint.clone();
        shard_constraint.conname = shard_object_name(&name, shard.shard_id);
        if let (Some(target), Some(pktable)) = (&target, &constraint.pktable) {
            let referenced_table = target.on_node(shard);
            shard_constraint.pktable = Some(shard_range(pktable, &referenced_table));
            shard_constraint.pk_attrs = string_nodes(&target.columns);
        }
        let mut shard_cmd = cmd.clone();
        shard_cmd.def = Some(Box::new(Node {
            node: Some(NodeEnum::Constraint(Box::new(shard_constraint))),
        }));
        NodeEnum::AlterTableStmt(AlterTableStmt {
            relation: Some(shard_range(relation, &shard.table)),
            cmds: vec![Node {
                node: Some(NodeEnum::AlterTableCmd(Box::new(shard_cmd))),
            }],
            ..stmt.clone()
        })
    })?;
    // A primary key makes its columns NOT NULL; on the coordinator too, where the columns'
    // definition is shown and checked.
    let coordinator_before = if constraint.contype == ConstrType::ConstrPrimary as i32 {
        columns
            .iter()
            .filter(|c| table.record.column(c).is_some_and(|col| !col.not_null))
            .map(|c| {
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET NOT NULL",
                    table.name.quoted(),
                    quote_ident(c)
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Route::Shards(ShardWork {
        table_id: table.table_id,
        coordinator_before,
        statements,
        coordinator_after: None,
        change: RecordChange::AddConstraint {
            name,
            referenced: target.map(|t| (t.relid, t.name)),
        },
        undo: Vec::new(),
    }))
}

/// Where a foreign key points on each shard's node.
struct ForeignKeyTarget {
    relid: u32,
    name: QualifiedName,
    columns: Vec<String>,
    /// The referenced table's shards by index (a colocated table), or none (a reference table,
    /// present under its own name on every node).
    shards: Vec<QualifiedName>,
}

impl ForeignKeyTarget {
    fn on_node(&self, shard: &Shard) -> QualifiedName {
        self.shards
            .get(shard.index as usize)
            .cloned()
            .unwrap_or_else(|| self.name.clone())
    }
}

fn foreign_key_target(
    constraint: &Constraint,
    columns: &[String],
    table: &Managed,
    referenced: Option<&Managed>,
) -> Result<ForeignKeyTarget, Refusal> {
    let refused = |why: String| {
        Refusal(format!(
            "a foreign key of distributed table {} must point at a reference table, or at a \
             table colocated with it through the distribution column; {why}",
            table.name
        ))
    };
    let Some(target) = referenced else {
        return Err(refused(
            "the referenced table is not distributed (make it a reference table with `shoal \
             table reference`)"
                .into(),
        ));
    };
    let mut pk_columns = string_list(&constraint.pk_attrs);
    if pk_columns.is_empty() {
        pk_columns = target
            .record
            .constraints
            .iter()
            .find(|c| c.kind == ConstraintKind::PrimaryKey)
            .map(|c| c.columns.clone())
            .ok_or_else(|| refused(format!("{} has no primary key", target.name)))?;
    }
    let shards = match (table.kind, target.kind) {
        (_, TableKind::Reference) => Vec::new(),
        (TableKind::Hash, TableKind::Hash) => {
            let through_key = columns
                .iter()
                .position(|c| Some(c.as_str()) == table.distribution_column.as_deref())
                .is_some_and(|p| {
                    pk_columns.get(p).map(String::as_str) == target.distribution_column.as_deref()
                });
            if target.colocation_id != table.colocation_id || !through_key {
                return Err(refused(format!(
                    "{} is not colocated with it through the distribution column",
                    target.name
                )));
            }
            target.shards.iter().map(|s| s.table.clone()).collect()
        }
        (TableKind::Schema, TableKind::Schema) if target.colocation_id == table.colocation_id => {
            target.shards.iter().map(|s| s.table.clone()).collect()
        }
        _ => {
            return Err(refused(format!(
                "{} is a {} table",
                target.name,
                target.kind.as_str()
            )))
        }
    };
    Ok(ForeignKeyTarget {
        relid: target.relid,
        name: target.name.clone(),
        columns: pk_columns,
        shards,
    })
}

/// CREATE INDEX: a unique index lives on the shards only; CONCURRENTLY is built shard by
/// shard (PostgreSQL refuses it on a partitioned table), then a plain one is also made on the
/// coordinator.
fn route_index(stmt: &IndexStmt, table: &Managed) -> Result<Route, Refusal> {
    if !stmt.unique && !stmt.concurrent {
        return Ok(Route::Coordinator);
    }
    let relation = stmt
        .relation
        .as_ref()
        .ok_or_else(|| Refusal("CREATE INDEX names no table".into()))?;
    let key_columns: Vec<String> = stmt
        .index_params
        .iter()
        .filter_map(|p| match &p.node {
            Some(NodeEnum::IndexElem(e)) if !e.name.is_empty() => Some(e.name.clone()),
            _ => None,
        })
        .collect();
    if stmt.unique && table.kind == TableKind::Hash {
        let column = table.distribution_column.as_deref().unwrap_or_default();
        if !key_columns.iter().any(|c| c == column) {
            return Err(Refusal(format!(
                "a unique index of {} must include its distribution column {} as a key column: \
                 each shard can only enforce uniqueness among its own rows",
                table.name,
                quote_ident(column)
            )));
        }
    }
    let name = if stmt.idxname.is_empty() {
        let addition: Vec<String> = stmt
            .index_params
            .iter()
            .map(|p| match &p.node {
                Some(NodeEnum::IndexElem(e)) if !e.name.is_empty() => e.name.clone(),
                _ => "expr".to_string(),
            })
            .collect();
        choose_name(
            &table.name.name,
            Some(&columns_addition(&addition)),
            "idx",
            |n| taken_name(table, n),
        )
    } else {
        stmt.idxname.clone()
    };
    let statements = per_shard(table, |shard| {
        NodeEnum::IndexStmt(Box::new(IndexStmt {
            idxname: shard_object_name(&name, shard.shard_id),
            relation: Some(shard_range(relation, &shard.table)),
            if_not_exists: stmt.if_not_exists || stmt.concurrent,
            ..stmt.clone()
        }))
    })?;
    let undo = table
        .shards
        .iter()
        .map(|shard| {
            (
                shard.clone(),
                format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                    quote_ident(&shard.table.schema),
                    quote_ident(&shard_object_name(&name, shard.shard_id))
                ),
            )
        })
        .collect();
    let (coordinator, change) = if stmt.unique {
        (None, RecordChange::AddIndex(name))
    } else {
        let plain = IndexStmt {
            idxname: name.clone(),
            concurrent: false,
            ..stmt.clone()
        };
        (
            Some(deparse(NodeEnum::IndexStmt(Box::new(plain)))?),
            RecordChange::ByCoordinator,
        )
    };
    let work = ShardWork {
        table_id: table.table_id,
        coordinator_before: Vec::new(),
        statements,
        coordinator_after: coordinator,
        change,
        undo,
    };
    Ok(if stmt.concurrent {
        Route::Concurrently(work)
    } else {
        Route::Shards(work)
    })
}

/// DROP INDEX of indexes only the shards hold (unique ones), or CONCURRENTLY (which
/// PostgreSQL refuses on a partitioned index). `dropped` are the managed tables' indexes the
/// statement names (resolved by the caller); an index of no managed table goes to the
/// coordinator.
fn route_drop_index(stmt: &DropStmt, dropped: &[(Managed, String)]) -> Result<Route, Refusal> {
    let Some((table, _)) = dropped.first() else {
        return Ok(Route::Coordinator);
    };
    if dropped.iter().any(|(t, _)| t.table_id != table.table_id) || dropped.len() > 1 {
        return Err(Refusal(
            "drop the indexes of distributed tables one statement at a time".into(),
        ));
    }
    let name = &dropped[0].1;
    let index = table
        .record
        .indexes
        .iter()
        .find(|i| &i.name == name)
        .ok_or_else(|| Refusal(format!("{} has no index {}", table.name, quote_ident(name))))?;
    if !index.unique && !stmt.concurrent {
        return Ok(Route::Coordinator);
    }
    if stmt.behavior == pg_query::protobuf::DropBehavior::DropCascade as i32 {
        return Err(Refusal(format!(
            "DROP INDEX ... CASCADE of an index of distributed table {}: drop what depends on \
             it first",
            table.name
        )));
    }
    let statements = table
        .shards
        .iter()
        .map(|shard| {
            (
                shard.clone(),
                format!(
                    "DROP INDEX {}IF EXISTS {}.{}",
                    if stmt.concurrent { "CONCURRENTLY " } else { "" },
                    quote_ident(&shard.table.schema),
                    quote_ident(&shard_object_name(name, shard.shard_id))
                ),
            )
        })
        .collect();
    let (coordinator, change) = if index.unique {
        (None, RecordChange::DropIndexes(vec![name.clone()]))
    } else {
        (
            Some(format!(
                "DROP INDEX {}.{}",
                quote_ident(&table.name.schema),
                quote_ident(name)
            )),
            RecordChange::ByCoordinator,
        )
    };
    let work = ShardWork {
        table_id: table.table_id,
        coordinator_before: Vec::new(),
        statements,
        coordinator_after: coordinator,
        change,
        undo: Vec::new(),
    };
    Ok(if stmt.concurrent {
        Route::Concurrently(work)
    } else {
        Route::Shards(work)
    })
}

#[cfg(test)]
mod tests;
