use std::fmt;

use serde::{Deserialize, Serialize};

/// Quotes an identifier the way PostgreSQL's `quote_ident` would, but always: a quoted name keeps
/// its exact case and characters, so `Order "Items"` stays one identifier.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Quotes a string literal for DDL, where bind parameters are not allowed (server options,
/// connection strings). Assumes `standard_conforming_strings = on`, the default since 9.1; the `E`
/// form is used whenever a backslash is present so the result is right either way.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for ch in value.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(ch),
        }
    }
    out.push('\'');
    out
}

/// A schema-qualified relation name, both parts unquoted (exactly as stored in `pg_class`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name as SQL text, both parts quoted: `"public"."Order ""Items"""`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Displays the name for people: parts are quoted only where SQL would need it.
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

fn display_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_plain_and_awkward_identifiers() {
        assert_eq!(quote_ident("orders"), r#""orders""#);
        assert_eq!(quote_ident(r#"Order "Items""#), r#""Order ""Items""""#);
        assert_eq!(quote_ident("my schema"), r#""my schema""#);
        assert_eq!(quote_ident("zählung"), r#""zählung""#);
        assert_eq!(quote_ident(""), r#""""#);
    }

    #[test]
    fn quotes_literals() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn qualified_names_quote_both_parts() {
        let name = QualifiedName::new("my schema", r#"Order "Items""#);
        assert_eq!(name.quoted(), r#""my schema"."Order ""Items""""#);
        assert_eq!(name.to_string(), r#""my schema"."Order ""Items""""#);
        assert_eq!(
            QualifiedName::new("public", "orders").to_string(),
            "public.orders"
        );
        assert_eq!(
            QualifiedName::new("public", "Orders").to_string(),
            r#"public."Orders""#
        );
    }
}
