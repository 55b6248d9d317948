//! SQL text helpers shared by every part of Shoal.
//!
//! Shoal writes DDL for tables whose names come from users. DDL cannot take bind parameters, so
//! every identifier goes through [`quote_ident`] and every literal through [`quote_literal`]; no
//! other code formats a user-supplied name into SQL. Everything here is pure.

mod ident;
mod names;

pub use ident::{quote_ident, quote_literal, QualifiedName};
pub use names::{derived_name, MAX_IDENTIFIER_BYTES};
