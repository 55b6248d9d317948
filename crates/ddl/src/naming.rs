//! The names PostgreSQL gives a constraint or an index the statement leaves unnamed, so that a
//! constraint added through `shoal ddl` is called on the coordinator's record what it would be
//! called on a plain table (and tools that drop it by that name find it).

/// PostgreSQL's identifier limit, in bytes.
const MAX_BYTES: usize = 63;

/// `makeObjectName`: `name1_name2_label`, with the longer of the two names cut (a byte at a
/// time, then back to a character boundary) until the whole fits.
pub fn make_object_name(name1: &str, name2: Option<&str>, label: &str) -> String {
    let overhead = label.len() + 1 + usize::from(name2.is_some());
    let available = MAX_BYTES.saturating_sub(overhead);
    let mut keep1 = name1.len();
    let mut keep2 = name2.map_or(0, str::len);
    while keep1 + keep2 > available {
        if keep1 > keep2 {
            keep1 -= 1;
        } else {
            keep2 -= 1;
        }
    }
    let mut out = clip(name1, keep1).to_string();
    if let Some(name2) = name2 {
        out.push('_');
        out.push_str(clip(name2, keep2));
    }
    out.push('_');
    out.push_str(label);
    out
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character boundary.
fn clip(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `ChooseIndexNameAddition` and friends: the column names joined by `_`.
pub fn columns_addition(columns: &[String]) -> String {
    let mut out = String::new();
    for column in columns {
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str(column);
        if out.len() > MAX_BYTES {
            break;
        }
    }
    out
}

/// `ChooseConstraintName` / `ChooseRelationName`: the made name, or with `1`, `2`, ... after
/// the label until `taken` says it is free.
pub fn choose_name(
    name1: &str,
    name2: Option<&str>,
    label: &str,
    taken: impl Fn(&str) -> bool,
) -> String {
    let mut candidate = make_object_name(name1, name2, label);
    let mut pass = 0;
    while taken(&candidate) {
        pass += 1;
        candidate = make_object_name(name1, name2, &format!("{label}{pass}"));
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_joined() {
        assert_eq!(make_object_name("orders", None, "pkey"), "orders_pkey");
        assert_eq!(
            make_object_name("orders", Some("id_customer_id"), "key"),
            "orders_id_customer_id_key"
        );
    }

    #[test]
    fn the_longer_name_is_cut_first() {
        let long = "a".repeat(70);
        let name = make_object_name(&long, Some("id"), "fkey");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("_id_fkey"), "{name}");
        let both = make_object_name(&"t".repeat(40), Some(&"c".repeat(40)), "key");
        assert_eq!(both, format!("{}_{}_key", "t".repeat(29), "c".repeat(29)));
    }

    #[test]
    fn cuts_land_on_character_boundaries() {
        let name = make_object_name(&"ä".repeat(40), None, "pkey");
        assert!(name.len() <= 63);
        assert!(name.ends_with("_pkey"));
    }

    #[test]
    fn taken_names_get_a_number() {
        let taken = ["t_a_key".to_string(), "t_a_key1".to_string()];
        assert_eq!(
            choose_name("t", Some("a"), "key", |n| taken.iter().any(|t| t == n)),
            "t_a_key2"
        );
        assert_eq!(columns_addition(&["a".into(), "b".into()]), "a_b");
    }
}
