//! What a statement means to the endpoint before any routing: transaction control that the
//! endpoint carries out itself, session settings that every connection of the session must
//! follow, or an ordinary statement. Decided by PostgreSQL's parser.

use pg_query::protobuf::TransactionStmtKind;
use pg_query::NodeEnum;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `BEGIN` / `START TRANSACTION`, with its text (replayed on every participant, so that
    /// the isolation level and access mode are the client's).
    Begin {
        sql: String,
        isolation: Option<Isolation>,
    },
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// `SET`, `RESET`, `SET SESSION AUTHORIZATION`, `SET ROLE`, `DISCARD`: the coordinator
    /// session takes it, and the endpoint copies the settings that change results.
    Session,
    /// `CREATE INDEX CONCURRENTLY` (on the table named) or `DROP INDEX CONCURRENTLY` (of the
    /// index named): PostgreSQL refuses it on a distributed table, so the endpoint builds it
    /// shard by shard itself (as `shoal ddl` does) when the table is Shoal's.
    ConcurrentIndex {
        create: bool,
        schema: String,
        name: String,
    },
    /// Anything else with a transaction meaning (`PREPARE TRANSACTION`, `COMMIT AND CHAIN`,
    /// `SET TRANSACTION`, `LOCK`, `LISTEN`, `DECLARE CURSOR`...): the coordinator's.
    CoordinatorOnly,
    /// An ordinary statement, for the router.
    Statement,
    /// Several statements in one query string, or text the parser refuses: the coordinator's.
    Unparsed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isolation {
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl Isolation {
    /// As `transaction_isolation` shows it (READ UNCOMMITTED is READ COMMITTED in PostgreSQL).
    pub fn from_setting(value: &str) -> Isolation {
        match value.to_ascii_lowercase().as_str() {
            "repeatable read" => Isolation::RepeatableRead,
            "serializable" => Isolation::Serializable,
            _ => Isolation::ReadCommitted,
        }
    }
}

pub fn classify(sql: &str) -> Control {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return Control::Unparsed;
    };
    let statements = &parsed.protobuf.stmts;
    if statements.len() != 1 {
        return if statements.is_empty() {
            Control::Statement
        } else {
            Control::Unparsed
        };
    }
    let Some(node) = statements[0].stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        return Control::Statement;
    };
    match node {
        NodeEnum::TransactionStmt(stmt) => {
            let kind = TransactionStmtKind::try_from(stmt.kind).unwrap_or_default();
            match kind {
                TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart => {
                    Control::Begin {
                        sql: sql.trim().trim_end_matches(';').to_string(),
                        isolation: begin_isolation(&stmt.options),
                    }
                }
                TransactionStmtKind::TransStmtCommit if !stmt.chain => Control::Commit,
                TransactionStmtKind::TransStmtRollback if !stmt.chain => Control::Rollback,
                TransactionStmtKind::TransStmtSavepoint => {
                    Control::Savepoint(stmt.savepoint_name.clone())
                }
                TransactionStmtKind::TransStmtRelease => {
                    Control::Release(stmt.savepoint_name.clone())
                }
                TransactionStmtKind::TransStmtRollbackTo => {
                    Control::RollbackTo(stmt.savepoint_name.clone())
                }
                _ => Control::CoordinatorOnly,
            }
        }
        NodeEnum::VariableSetStmt(set) if set.name != "TRANSACTION" && !set.is_local => {
            Control::Session
        }
        NodeEnum::DiscardStmt(_) => Control::Session,
        NodeEnum::IndexStmt(index) if index.concurrent => match &index.relation {
            Some(range) => Control::ConcurrentIndex {
                create: true,
                schema: range.schemaname.clone(),
                name: range.relname.clone(),
            },
            None => Control::CoordinatorOnly,
        },
        NodeEnum::DropStmt(drop)
            if drop.concurrent
                && drop.remove_type == pg_query::protobuf::ObjectType::ObjectIndex as i32
                && drop.objects.len() == 1 =>
        {
            match dropped_name(&drop.objects[0]) {
                Some((schema, name)) => Control::ConcurrentIndex {
                    create: false,
                    schema,
                    name,
                },
                None => Control::CoordinatorOnly,
            }
        }
        NodeEnum::SelectStmt(_)
        | NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_) => Control::Statement,
        _ => Control::CoordinatorOnly,
    }
}

/// `[schema.]name` of a dropped object.
fn dropped_name(object: &pg_query::Node) -> Option<(String, String)> {
    let Some(NodeEnum::List(list)) = &object.node else {
        return None;
    };
    let parts: Vec<String> = list
        .items
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect();
    match parts.as_slice() {
        [name] => Some((String::new(), name.clone())),
        [schema, name] => Some((schema.clone(), name.clone())),
        _ => None,
    }
}

fn begin_isolation(options: &[pg_query::Node]) -> Option<Isolation> {
    options.iter().find_map(|option| match &option.node {
        Some(NodeEnum::DefElem(def)) if def.defname == "transaction_isolation" => {
            let value = def.arg.as_ref().and_then(|a| a.node.as_ref());
            match value {
                Some(NodeEnum::AConst(c)) => match &c.val {
                    Some(pg_query::protobuf::a_const::Val::Sval(s)) => {
                        Some(Isolation::from_setting(&s.sval))
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    })
}

/// The savepoint statements replayed on a participant that joins a transaction late, so
/// that a later `ROLLBACK TO` means the same everywhere.
pub fn savepoint_sql(name: &str) -> String {
    format!("SAVEPOINT {}", shoal_sql::quote_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognised_with_its_isolation() {
        assert_eq!(
            classify("begin"),
            Control::Begin {
                sql: "begin".into(),
                isolation: None
            }
        );
        assert_eq!(
            classify("START TRANSACTION ISOLATION LEVEL REPEATABLE READ;"),
            Control::Begin {
                sql: "START TRANSACTION ISOLATION LEVEL REPEATABLE READ".into(),
                isolation: Some(Isolation::RepeatableRead)
            }
        );
        assert_eq!(classify("END"), Control::Commit);
        assert_eq!(classify("commit"), Control::Commit);
        assert_eq!(classify("ABORT"), Control::Rollback);
        assert_eq!(classify("COMMIT AND CHAIN"), Control::CoordinatorOnly);
        assert_eq!(
            classify("savepoint \"A b\""),
            Control::Savepoint("A b".into())
        );
        assert_eq!(
            classify("ROLLBACK TO SAVEPOINT a"),
            Control::RollbackTo("a".into())
        );
        assert_eq!(classify("RELEASE a"), Control::Release("a".into()));
        assert_eq!(
            classify("PREPARE TRANSACTION 'x'"),
            Control::CoordinatorOnly
        );
    }

    #[test]
    fn settings_statements_and_the_rest() {
        assert_eq!(classify("SET search_path = a, b"), Control::Session);
        assert_eq!(classify("RESET ALL"), Control::Session);
        assert_eq!(classify("DISCARD ALL"), Control::Session);
        assert_eq!(
            classify("SET LOCAL work_mem = '1MB'"),
            Control::CoordinatorOnly
        );
        assert_eq!(
            classify("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Control::CoordinatorOnly
        );
        assert_eq!(classify("SELECT 1"), Control::Statement);
        assert_eq!(classify("UPDATE t SET a = 1"), Control::Statement);
        assert_eq!(classify("CREATE TABLE t (a int)"), Control::CoordinatorOnly);
        assert_eq!(classify("SELECT 1; SELECT 2"), Control::Unparsed);
        assert_eq!(classify("SELEC 1"), Control::Unparsed);
    }

    #[test]
    fn concurrent_index_statements_name_their_table_or_index() {
        assert_eq!(
            classify("CREATE INDEX CONCURRENTLY o_note ON shop.\"Orders\" (note)"),
            Control::ConcurrentIndex {
                create: true,
                schema: "shop".into(),
                name: "Orders".into()
            }
        );
        assert_eq!(
            classify("DROP INDEX CONCURRENTLY IF EXISTS o_note"),
            Control::ConcurrentIndex {
                create: false,
                schema: String::new(),
                name: "o_note".into()
            }
        );
        assert_eq!(
            classify("CREATE INDEX o_note ON orders (note)"),
            Control::CoordinatorOnly
        );
        assert_eq!(
            classify("DROP INDEX CONCURRENTLY a, b"),
            Control::CoordinatorOnly
        );
    }

    #[test]
    fn savepoint_names_are_quoted() {
        assert_eq!(savepoint_sql("Sp 1"), "SAVEPOINT \"Sp 1\"");
    }
}
