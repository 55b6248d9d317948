//! Parsing what the `test_decoding` plugin prints, as read from a worker's slot with
//! `pg_logical_slot_peek_changes`. Pure.
//!
//! The format, per row: `BEGIN`, `COMMIT`, or
//! `table <schema>.<name>: <INSERT|UPDATE|DELETE|TRUNCATE>: <columns>`, where an update with an
//! old row reads `old-key: <columns> new-tuple: <columns>` and each column is
//! `<name>[<type>]:<value>`. Names are quoted only where SQL needs it; a value is `null`,
//! `unchanged-toast-datum`, a bare number or boolean, `B'..'` for bit strings, or a quoted
//! literal with `'` doubled. An old row leaves out its NULL columns.

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// The text form of the value, as the type's output function wrote it.
    Text(String),
    /// An unchanged TOASTed value the new row of an update does not repeat.
    UnchangedToast,
}

pub type Row = Vec<(String, Value)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
    Truncate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub schema: String,
    pub table: String,
    pub kind: ChangeKind,
    pub old: Option<Row>,
    pub new: Option<Row>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The LSN of the COMMIT row: transactions come in this order.
    pub commit_lsn: String,
    pub changes: Vec<Change>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("cannot read the change `{line}`: {reason}")]
pub struct DecodeError {
    pub line: String,
    pub reason: String,
}

fn error(line: &str, reason: &str) -> DecodeError {
    DecodeError {
        line: line.chars().take(200).collect(),
        reason: reason.to_string(),
    }
}

/// Groups `(lsn, data)` rows into transactions. Rows after the last COMMIT (never the case for
/// the SQL functions, which return whole transactions) are left out.
pub fn transactions(rows: &[(String, String)]) -> Result<Vec<Transaction>, DecodeError> {
    let mut out = Vec::new();
    let mut current: Option<Vec<Change>> = None;
    for (lsn, data) in rows {
        if data == "BEGIN" || data.starts_with("BEGIN ") {
            current = Some(Vec::new());
        } else if data.starts_with("message:") {
            // Logical messages (Shoal's own WAL flushes) carry no rows.
            continue;
        } else if data == "COMMIT" || data.starts_with("COMMIT ") {
            let changes = current
                .take()
                .ok_or_else(|| error(data, "COMMIT without BEGIN"))?;
            out.push(Transaction {
                commit_lsn: lsn.clone(),
                changes,
            });
        } else {
            let change = parse_change(data)?;
            current
                .as_mut()
                .ok_or_else(|| error(data, "a change outside a transaction"))?
                .push(change);
        }
    }
    Ok(out)
}

pub fn parse_change(line: &str) -> Result<Change, DecodeError> {
    let rest = line
        .strip_prefix("table ")
        .ok_or_else(|| error(line, "no `table ` prefix"))?;
    let mut cursor = Cursor { text: rest, pos: 0 };
    let schema = cursor
        .identifier()
        .ok_or_else(|| error(line, "no schema name"))?;
    if !cursor.eat(".") {
        return Err(error(line, "no `.` after the schema"));
    }
    let table = cursor
        .identifier()
        .ok_or_else(|| error(line, "no table name"))?;
    if !cursor.eat(": ") {
        return Err(error(line, "no `: ` after the table"));
    }
    let action_end = cursor
        .rest()
        .find(':')
        .ok_or_else(|| error(line, "no action"))?;
    let action = cursor.rest()[..action_end].to_string();
    cursor.pos += action_end + 1;
    cursor.eat(" ");
    let kind = match action.as_str() {
        "INSERT" => ChangeKind::Insert,
        "UPDATE" => ChangeKind::Update,
        "DELETE" => ChangeKind::Delete,
        "TRUNCATE" => ChangeKind::Truncate,
        other => return Err(error(line, &format!("unknown action {other}"))),
    };
    let (old, new) = match kind {
        ChangeKind::Truncate => (None, None),
        ChangeKind::Insert => (None, Some(cursor.columns(line, None)?)),
        ChangeKind::Delete => {
            if cursor.rest().starts_with("(no-tuple-data)") {
                (None, None)
            } else {
                (Some(cursor.columns(line, None)?), None)
            }
        }
        ChangeKind::Update => {
            if cursor.eat("old-key: ") {
                let old = cursor.columns(line, Some("new-tuple: "))?;
                if !cursor.eat("new-tuple: ") {
                    return Err(error(line, "no new tuple after the old key"));
                }
                (Some(old), Some(cursor.columns(line, None)?))
            } else {
                (None, Some(cursor.columns(line, None)?))
            }
        }
    };
    Ok(Change {
        schema,
        table,
        kind,
        old,
        new,
    })
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// An identifier as `quote_identifier` prints it: bare, or in double quotes with `""`.
    fn identifier(&mut self) -> Option<String> {
        let rest = self.rest();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices().peekable();
            while let Some((i, ch)) = chars.next() {
                if ch == '"' {
                    if chars.peek().map(|(_, c)| *c) == Some('"') {
                        out.push('"');
                        chars.next();
                    } else {
                        self.pos += 1 + i + 1;
                        return Some(out);
                    }
                } else {
                    out.push(ch);
                }
            }
            None
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            self.pos += end;
            Some(rest[..end].to_string())
        }
    }

    /// Columns up to the end, or up to `stop` (which only appears between columns).
    fn columns(&mut self, line: &str, stop: Option<&str>) -> Result<Row, DecodeError> {
        let mut row = Vec::new();
        loop {
            if self.rest().is_empty() || stop.is_some_and(|s| self.rest().starts_with(s)) {
                return Ok(row);
            }
            let name = self
                .identifier()
                .ok_or_else(|| error(line, "no column name"))?;
            if !self.eat("[") {
                return Err(error(line, "no `[` after a column name"));
            }
            let type_end = self
                .rest()
                .find("]:")
                .ok_or_else(|| error(line, "no end of a type"))?;
            self.pos += type_end + 2;
            let value = self.value(line)?;
            row.push((name, value));
            self.eat(" ");
        }
    }

    fn value(&mut self, line: &str) -> Result<Value, DecodeError> {
        let rest = self.rest();
        if let Some(quoted) = rest.strip_prefix('\'').or_else(|| rest.strip_prefix("B'")) {
            let offset = rest.len() - quoted.len();
            let mut out = String::new();
            let mut chars = quoted.char_indices().peekable();
            while let Some((i, ch)) = chars.next() {
                if ch == '\'' {
                    if chars.peek().map(|(_, c)| *c) == Some('\'') {
                        out.push('\'');
                        chars.next();
                    } else {
                        self.pos += offset + i + 1;
                        return Ok(Value::Text(out));
                    }
                } else {
                    out.push(ch);
                }
            }
            return Err(error(line, "an unterminated quoted value"));
        }
        let end = rest.find(' ').unwrap_or(rest.len());
        let word = &rest[..end];
        self.pos += end;
        Ok(match word {
            "null" => Value::Null,
            "unchanged-toast-datum" => Value::UnchangedToast,
            _ => Value::Text(word.to_string()),
        })
    }
}

/// The new row of an update with its unchanged TOAST values taken from the old row (complete
/// under `REPLICA IDENTITY FULL`).
pub fn complete_new_row(old: Option<&Row>, new: &Row) -> Row {
    new.iter()
        .map(|(name, value)| match value {
            Value::UnchangedToast => {
                let from_old = old
                    .and_then(|o| o.iter().find(|(n, _)| n == name))
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Value::Null);
                (name.clone(), from_old)
            }
            other => (name.clone(), other.clone()),
        })
        .collect()
}

/// A row as the array the change buffer stores: element `attnum` (1-based) holds the text of the
/// coordinator table's column with that attribute number, as `positions` maps names to them.
/// Columns the table does not have (any more) are left out; dropped or missing ones are NULL.
pub fn row_values(
    row: &Row,
    positions: &HashMap<String, usize>,
    len: usize,
) -> Vec<Option<String>> {
    let mut values = vec![None; len];
    for (name, value) in row {
        if let (Some(&attnum), Value::Text(text)) = (positions.get(name), value) {
            if let Some(slot) = attnum.checked_sub(1).and_then(|i| values.get_mut(i)) {
                *slot = Some(text.clone());
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    #[test]
    fn inserts() {
        let change = parse_change(
            "table public.orders_102009: INSERT: id[bigint]:1 note[text]:'it''s' amount[numeric]:12.50 ok[boolean]:true gone[text]:null",
        )
        .unwrap();
        assert_eq!(change.schema, "public");
        assert_eq!(change.table, "orders_102009");
        assert_eq!(change.kind, ChangeKind::Insert);
        assert_eq!(
            change.new.unwrap(),
            vec![
                ("id".into(), text("1")),
                ("note".into(), text("it's")),
                ("amount".into(), text("12.50")),
                ("ok".into(), text("true")),
                ("gone".into(), Value::Null),
            ]
        );
    }

    #[test]
    fn quoted_names_types_with_brackets_and_spaces_in_values() {
        let change = parse_change(
            r#"table "my schema"."Order ""Items""_7": INSERT: "Kunden Nr"[bigint]:3 tags[text[]]:'{a,"b c"}' at[timestamp with time zone]:'2026-01-01 00:00:00+00' b[bit(3)]:B'101'"#,
        )
        .unwrap();
        assert_eq!(change.schema, "my schema");
        assert_eq!(change.table, r#"Order "Items"_7"#);
        assert_eq!(
            change.new.unwrap(),
            vec![
                ("Kunden Nr".into(), text("3")),
                ("tags".into(), text(r#"{a,"b c"}"#)),
                ("at".into(), text("2026-01-01 00:00:00+00")),
                ("b".into(), text("101")),
            ]
        );
    }

    #[test]
    fn updates_with_old_rows_and_toast() {
        let change = parse_change(
            "table public.t: UPDATE: old-key: id[integer]:1 big[text]:'xxx' new-tuple: id[integer]:1 big[text]:unchanged-toast-datum v[integer]:2",
        )
        .unwrap();
        assert_eq!(change.kind, ChangeKind::Update);
        let old = change.old.unwrap();
        assert_eq!(
            old,
            vec![("id".into(), text("1")), ("big".into(), text("xxx"))]
        );
        let new = complete_new_row(Some(&old), &change.new.unwrap());
        assert_eq!(new[1], ("big".into(), text("xxx")));
        assert_eq!(new[2], ("v".into(), text("2")));
        let plain = parse_change("table public.t: UPDATE: id[integer]:1").unwrap();
        assert!(plain.old.is_none());
    }

    #[test]
    fn deletes_truncates_and_transactions() {
        let rows = vec![
            ("0/10".to_string(), "BEGIN".to_string()),
            (
                "0/11".to_string(),
                "table public.t: DELETE: id[integer]:1".to_string(),
            ),
            (
                "0/12".to_string(),
                "table public.t: TRUNCATE: (no-flags)".to_string(),
            ),
            ("0/13".to_string(), "COMMIT".to_string()),
            (
                "0/14".to_string(),
                "message: transactional: 0 prefix: shoal, sz: 5 content:flush".to_string(),
            ),
            ("0/20".to_string(), "BEGIN 733".to_string()),
            (
                "0/20".to_string(),
                "message: transactional: 1 prefix: shoal, sz: 5 content:flush".to_string(),
            ),
            ("0/21".to_string(), "COMMIT 733".to_string()),
        ];
        let txns = transactions(&rows).unwrap();
        assert_eq!(txns.len(), 2);
        assert_eq!(txns[0].commit_lsn, "0/13");
        assert_eq!(txns[0].changes[0].kind, ChangeKind::Delete);
        assert_eq!(
            txns[0].changes[0].old.as_ref().unwrap()[0],
            ("id".into(), text("1"))
        );
        assert_eq!(txns[0].changes[1].kind, ChangeKind::Truncate);
        assert!(txns[1].changes.is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_change("nonsense").is_err());
        assert!(parse_change("table public.t: MERGE: a[int]:1").is_err());
        assert!(parse_change("table public.t: INSERT: a[int]:'open").is_err());
        assert!(transactions(&[("0/1".into(), "COMMIT".into())]).is_err());
    }

    #[test]
    fn rows_become_arrays_by_attribute_number() {
        // Attribute 2 was dropped; `gone` is no longer a column of the coordinator's table.
        let positions: HashMap<String, usize> = [
            ("a".to_string(), 1),
            ("c".to_string(), 3),
            ("d".to_string(), 4),
        ]
        .into();
        let row = vec![
            ("a".into(), text("1")),
            ("c".into(), text("it's")),
            ("gone".into(), text("x")),
            ("d".into(), Value::Null),
        ];
        assert_eq!(
            row_values(&row, &positions, 4),
            vec![Some("1".to_string()), None, Some("it's".to_string()), None]
        );
    }
}
