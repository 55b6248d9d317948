/// PostgreSQL truncates identifiers to `NAMEDATALEN - 1` bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Derives an object name from a base name and a suffix (`orders` + `102008` gives
/// `orders_102008`) that always fits in an identifier.
///
/// PostgreSQL would silently truncate a long name, so two shards of one long-named table could
/// collide. When the result would be too long, the base is cut at a character boundary and a hash
/// of the whole base is inserted, so distinct bases stay distinct.
pub fn derived_name(base: &str, suffix: &str) -> String {
    let plain = format!("{base}_{suffix}");
    if plain.len() <= MAX_IDENTIFIER_BYTES {
        return plain;
    }
    let hash = format!("{:08x}", fnv1a(base.as_bytes()) as u32);
    let budget = MAX_IDENTIFIER_BYTES - suffix.len() - hash.len() - 2;
    let mut cut = budget.min(base.len());
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash}_{suffix}", &base[..cut])
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_base_underscore_suffix() {
        assert_eq!(derived_name("orders", "102008"), "orders_102008");
        assert_eq!(derived_name(r#"Order "Items""#, "7"), r#"Order "Items"_7"#);
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let a = "a".repeat(60) + "x";
        let b = "a".repeat(60) + "y";
        let na = derived_name(&a, "102008");
        let nb = derived_name(&b, "102008");
        assert!(na.len() <= MAX_IDENTIFIER_BYTES);
        assert!(nb.len() <= MAX_IDENTIFIER_BYTES);
        assert_ne!(na, nb);
        assert!(na.ends_with("_102008"));
    }

    #[test]
    fn long_multibyte_names_cut_on_char_boundary() {
        let base = "ä".repeat(40);
        let name = derived_name(&base, "1");
        assert!(name.len() <= MAX_IDENTIFIER_BYTES);
        assert!(name.ends_with("_1"));
    }
}
