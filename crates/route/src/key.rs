//! Distribution keys: the column types whose hash partitioning Shoal reproduces, and their
//! values as a client sends them (text, or binary in the extended protocol).

use crate::hash::{hash_bytes_extended, hash_uint32_extended, PARTITION_SEED};

/// Why a key's shard cannot be computed here. Not an error for the user: the statement goes to
/// the coordinator, which computes it (or reports the bad input in PostgreSQL's own words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("distribution columns of type {0} are routed by the coordinator")]
    UnsupportedType(String),
    #[error("{value:?} is not a {ty} value this router reads the way PostgreSQL does")]
    Unreadable { ty: &'static str, value: String },
}

/// A distribution column type whose hash partitioning this crate reproduces. Text types only
/// with deterministic collations (a nondeterministic one hashes sort keys instead of bytes:
/// the caller checks the column's collation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    Oid,
    Bool,
    /// `text` and `varchar`, which share their hash function.
    Text,
    /// `char(n)`: trailing spaces do not count.
    Bpchar,
    Uuid,
    Bytea,
    Date,
    /// `timestamp` and `timestamptz` (microseconds since 2000-01-01, as stored).
    Timestamp,
}

/// A key value, as PostgreSQL stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    Null,
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Oid(u32),
    Bool(bool),
    Text(Vec<u8>),
    Bpchar(Vec<u8>),
    Uuid([u8; 16]),
    Bytea(Vec<u8>),
    Date(i32),
    Timestamp(i64),
}

impl KeyType {
    /// The key type of a built-in type by its OID (fixed in every PostgreSQL), for parameters
    /// a client binds in binary with a declared type.
    pub fn from_builtin_oid(oid: u32) -> Option<KeyType> {
        Some(match oid {
            21 => KeyType::Int2,
            23 => KeyType::Int4,
            20 => KeyType::Int8,
            26 => KeyType::Oid,
            16 => KeyType::Bool,
            25 | 1043 => KeyType::Text,
            1042 => KeyType::Bpchar,
            2950 => KeyType::Uuid,
            17 => KeyType::Bytea,
            1082 => KeyType::Date,
            1114 | 1184 => KeyType::Timestamp,
            _ => return None,
        })
    }

    /// The type of a column as `format_type` names it (`integer`, `character varying(20)`, ...).
    pub fn from_type_name(name: &str) -> Result<KeyType, KeyError> {
        let base = name.split('(').next().unwrap_or(name).trim();
        Ok(match base {
            "smallint" => KeyType::Int2,
            "integer" => KeyType::Int4,
            "bigint" => KeyType::Int8,
            "oid" => KeyType::Oid,
            "boolean" => KeyType::Bool,
            "text" | "character varying" => KeyType::Text,
            "character" => KeyType::Bpchar,
            "uuid" => KeyType::Uuid,
            "bytea" => KeyType::Bytea,
            "date" => KeyType::Date,
            "timestamp without time zone" | "timestamp with time zone" => KeyType::Timestamp,
            _ => return Err(KeyError::UnsupportedType(name.to_string())),
        })
    }

    fn name(self) -> &'static str {
        match self {
            KeyType::Int2 => "smallint",
            KeyType::Int4 => "integer",
            KeyType::Int8 => "bigint",
            KeyType::Oid => "oid",
            KeyType::Bool => "boolean",
            KeyType::Text => "text",
            KeyType::Bpchar => "character",
            KeyType::Uuid => "uuid",
            KeyType::Bytea => "bytea",
            KeyType::Date => "date",
            KeyType::Timestamp => "timestamp",
        }
    }

    /// A value in PostgreSQL's text form (a literal, or a parameter sent as text). Only forms
    /// read exactly as the server reads them are taken: anything else (PostgreSQL 16's `0x1F`
    /// and `1_000` integers, dates, which depend on DateStyle, bytea's escape format) is left to
    /// the coordinator. Text is taken as UTF-8 bytes: the caller checks that the client and
    /// server encodings are UTF8.
    pub fn read_text(self, text: &str) -> Result<KeyValue, KeyError> {
        let unreadable = || KeyError::Unreadable {
            ty: self.name(),
            value: text.to_string(),
        };
        let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let decimal = |s: &str| {
            let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        };
        Ok(match self {
            KeyType::Int2 | KeyType::Int4 | KeyType::Int8 | KeyType::Oid if !decimal(trimmed) => {
                return Err(unreadable())
            }
            KeyType::Int2 => KeyValue::Int2(trimmed.parse().map_err(|_| unreadable())?),
            KeyType::Int4 => KeyValue::Int4(trimmed.parse().map_err(|_| unreadable())?),
            KeyType::Int8 => KeyValue::Int8(trimmed.parse().map_err(|_| unreadable())?),
            KeyType::Oid => KeyValue::Oid(trimmed.parse().map_err(|_| unreadable())?),
            KeyType::Bool => match trimmed.to_ascii_lowercase().as_str() {
                "t" | "true" | "y" | "yes" | "on" | "1" => KeyValue::Bool(true),
                "f" | "false" | "n" | "no" | "off" | "0" => KeyValue::Bool(false),
                _ => return Err(unreadable()),
            },
            KeyType::Text => KeyValue::Text(text.as_bytes().to_vec()),
            KeyType::Bpchar => KeyValue::Bpchar(text.as_bytes().to_vec()),
            KeyType::Uuid => KeyValue::Uuid(read_uuid(text).ok_or_else(unreadable)?),
            KeyType::Bytea => {
                let hex = text.strip_prefix("\\x").ok_or_else(unreadable)?;
                KeyValue::Bytea(read_hex(hex).ok_or_else(unreadable)?)
            }
            KeyType::Date | KeyType::Timestamp => return Err(unreadable()),
        })
    }

    /// A value in PostgreSQL's binary form (a parameter of the extended protocol).
    pub fn read_binary(self, bytes: &[u8]) -> Result<KeyValue, KeyError> {
        let unreadable = || KeyError::Unreadable {
            ty: self.name(),
            value: format!("{} binary bytes", bytes.len()),
        };
        Ok(match self {
            KeyType::Int2 => {
                KeyValue::Int2(i16::from_be_bytes(exact(bytes).ok_or_else(unreadable)?))
            }
            KeyType::Int4 => {
                KeyValue::Int4(i32::from_be_bytes(exact(bytes).ok_or_else(unreadable)?))
            }
            KeyType::Int8 => {
                KeyValue::Int8(i64::from_be_bytes(exact(bytes).ok_or_else(unreadable)?))
            }
            KeyType::Oid => KeyValue::Oid(u32::from_be_bytes(exact(bytes).ok_or_else(unreadable)?)),
            KeyType::Date => {
                KeyValue::Date(i32::from_be_bytes(exact(bytes).ok_or_else(unreadable)?))
            }
            KeyType::Timestamp => {
                KeyValue::Timestamp(i64::from_be_bytes(exact(bytes).ok_or_else(unreadable)?))
            }
            KeyType::Bool => match bytes {
                [0] => KeyValue::Bool(false),
                [_] => KeyValue::Bool(true),
                _ => return Err(unreadable()),
            },
            KeyType::Text => KeyValue::Text(bytes.to_vec()),
            KeyType::Bpchar => KeyValue::Bpchar(bytes.to_vec()),
            KeyType::Uuid => KeyValue::Uuid(exact(bytes).ok_or_else(unreadable)?),
            KeyType::Bytea => KeyValue::Bytea(bytes.to_vec()),
        })
    }
}

fn exact<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// The forms of uuid text everybody writes: 32 hex digits, optionally in the 8-4-4-4-12
/// groups, optionally in braces.
fn read_uuid(text: &str) -> Option<[u8; 16]> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let digits: String = if inner.len() == 36 {
        let groups: Vec<&str> = inner.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return None;
        }
        groups.concat()
    } else {
        inner.to_string()
    };
    read_hex(&digits)?.try_into().ok()
}

fn read_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() & 1 == 1 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

impl KeyValue {
    /// What the type's extended hash function returns for this value with the partitioning
    /// seed; `None` for NULL, which partitioning leaves out of the row's hash.
    pub fn partition_hash(&self) -> Option<u64> {
        let seed = PARTITION_SEED;
        Some(match self {
            KeyValue::Null => return None,
            KeyValue::Int2(v) => hash_uint32_extended(i32::from(*v) as u32, seed),
            KeyValue::Int4(v) | KeyValue::Date(v) => hash_uint32_extended(*v as u32, seed),
            KeyValue::Int8(v) | KeyValue::Timestamp(v) => hash_int8(*v, seed),
            KeyValue::Oid(v) => hash_uint32_extended(*v, seed),
            KeyValue::Bool(v) => hash_uint32_extended(u32::from(*v), seed),
            KeyValue::Text(bytes) | KeyValue::Bytea(bytes) => hash_bytes_extended(bytes, seed),
            KeyValue::Uuid(bytes) => hash_bytes_extended(bytes, seed),
            KeyValue::Bpchar(bytes) => {
                let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
                hash_bytes_extended(&bytes[..end], seed)
            }
        })
    }
}

/// `hashint8extended`: folds the high half into the low so that equal values of int2, int4
/// and int8 hash alike.
fn hash_int8(value: i64, seed: u64) -> u64 {
    let low = value as u32;
    let high = (value >> 32) as u32;
    let folded = if value >= 0 { low ^ high } else { low ^ !high };
    hash_uint32_extended(folded, seed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // Figures from PostgreSQL 15 (`hashint8extended(-5, seed)`, `uuid_hash_extended(...)`).
    #[test]
    fn matches_values_postgresql_computed() {
        assert_eq!(
            KeyValue::Int8(-5).partition_hash().unwrap() as i64,
            5466844944386338076
        );
        let uuid = KeyType::Uuid
            .read_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            .unwrap();
        assert_eq!(uuid.partition_hash().unwrap() as i64, 424513190990560493);
        assert_eq!(
            KeyValue::Bool(true).partition_hash(),
            KeyValue::Int4(1).partition_hash()
        );
    }

    #[test]
    fn text_forms_read_as_the_server_reads_them() {
        assert_eq!(
            KeyType::Int4.read_text(" -42 ").unwrap(),
            KeyValue::Int4(-42)
        );
        assert!(KeyType::Int4.read_text("0x1F").is_err());
        assert!(KeyType::Int4.read_text("1_000").is_err());
        assert!(KeyType::Int2.read_text("40000").is_err());
        assert_eq!(KeyType::Bool.read_text("ON").unwrap(), KeyValue::Bool(true));
        assert_eq!(
            KeyType::Uuid.read_text("{A0EEBC999C0B4EF8BB6D6BB9BD380A11}"),
            KeyType::Uuid.read_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert!(KeyType::Uuid
            .read_text("a0eebc99-9c0b4ef8-bb6d-6bb9bd380a11")
            .is_err());
        assert_eq!(
            KeyType::Bytea.read_text("\\x00ff").unwrap(),
            KeyValue::Bytea(vec![0, 255])
        );
        assert!(KeyType::Date.read_text("2026-12-01").is_err());
        assert_eq!(
            KeyType::from_type_name("character varying(20)").unwrap(),
            KeyType::Text
        );
        assert!(KeyType::from_type_name("numeric").is_err());
    }

    proptest! {
        #[test]
        fn equal_integers_hash_alike_whatever_their_width(v in any::<i16>()) {
            let h = KeyValue::Int2(v).partition_hash();
            prop_assert_eq!(h, KeyValue::Int4(i32::from(v)).partition_hash());
            prop_assert_eq!(h, KeyValue::Int8(i64::from(v)).partition_hash());
        }

        #[test]
        fn trailing_spaces_do_not_count_for_char(s in "[a-z ]{0,20}", pad in 0usize..5) {
            let padded = format!("{s}{}", " ".repeat(pad));
            prop_assert_eq!(
                KeyValue::Bpchar(s.into_bytes()).partition_hash(),
                KeyValue::Bpchar(padded.into_bytes()).partition_hash()
            );
        }

        #[test]
        fn text_and_binary_forms_agree(v in any::<i64>()) {
            prop_assert_eq!(
                KeyType::Int8.read_text(&v.to_string()).unwrap(),
                KeyType::Int8.read_binary(&v.to_be_bytes()).unwrap()
            );
        }

        #[test]
        fn the_shard_index_is_below_the_shard_count(v in any::<i64>(), shards in 1u32..1000) {
            prop_assert!(crate::shard_index(&KeyValue::Int8(v), shards) < shards);
        }
    }
}
