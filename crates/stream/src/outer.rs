//! The delta of an outer join of two relations: its inner join's delta (inclusion–exclusion,
//! as for any join) plus the delta of the rows of a preserved side P that have no match in the
//! other side O, NULL-extended. With `m(p)` the number of O rows matching p in O's new state
//! and `D(p)` the signed number in ΔO (so `m(p) − D(p)` is the number in O's old state), and
//! `P_old = P_new − ΔP`, the unmatched rows change by
//!
//! ```text
//!   Σ p ∈ P_new, some ΔO row matching p:  ([m(p) = 0] − [m(p) − D(p) = 0]) · p
//! + Σ p ∈ ΔP (signed):                    sign · [m(p) − D(p) = 0] · p
//! ```
//!
//! The first term reaches only the P rows a changed O row matches, the second only the changed
//! P rows; both read O's new state, probed per row, except that when O did not change the
//! second is an anti-join of the changed P rows with O. A NULL-extended row is made by joining p to
//! O `ON false`, so the query's own expressions give it its NULLs.

use crate::from::{source_slot, OuterJoin};
use crate::plan::Differential;
use crate::refresh::{from_where_in, qi, sign_column, source_item, DeltaRelations, DELTA_COLUMN};

/// The FROM template of the outer join's inner part.
pub(crate) fn inner_from(o: &OuterJoin) -> String {
    format!(
        "{} JOIN {} ON {}",
        source_slot(0),
        source_slot(1),
        o.condition
    )
}

/// The terms adding the delta of the unmatched rows of each preserved side, as SELECTs of
/// `items` and a signed `__shoal_delta` for [`crate::refresh`]'s union.
pub(crate) fn anti_terms(
    d: &Differential,
    o: &OuterJoin,
    items: &[(String, String)],
    deltas: &[Option<&DeltaRelations>],
) -> Vec<String> {
    let mut terms = Vec::new();
    for &p in o.kind.preserved() {
        let other = 1 - p;
        let o_source = &d.sources[other];
        let cond = &o.condition;
        // p's matches in O's new state, and in O's delta (signed); the latter is 0 when O did
        // not change.
        let matches = format!(
            "CROSS JOIN LATERAL (SELECT count(*) AS {m} FROM {rel} WHERE ({cond})) AS {mm}",
            m = qi("__shoal_matches"),
            rel = source_item(o_source, other, None),
            mm = qi("__shoal_mm"),
        );
        let delta_matches = deltas[other].map(|delta| {
            format!(
                "CROSS JOIN LATERAL (SELECT coalesce(sum({sign}), 0) AS {dm} FROM {rel} \
                 WHERE ({cond})) AS {dd}",
                sign = qi(&sign_column(other)),
                dm = qi("__shoal_dmatches"),
                rel = source_item(o_source, other, Some(delta)),
                dd = qi("__shoal_dd"),
            )
        });
        let m = qi("__shoal_matches");
        let old_m = match delta_matches {
            Some(_) => format!("{m} - {}", qi("__shoal_dmatches")),
            None => m.clone(),
        };
        let laterals = [Some(matches), delta_matches.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        // The template: P, NULL-extended by O, then the probes of O.
        let null_extended = format!(
            "{} LEFT JOIN {} ON false {laterals}",
            source_slot(p),
            source_slot(other)
        );
        let select = |sign: String| -> String {
            let mut cols: Vec<String> = items
                .iter()
                .map(|(name, expr)| format!("{expr} AS {}", qi(name)))
                .collect();
            cols.push(format!("{sign} AS {}", qi(DELTA_COLUMN)));
            cols.join(", ")
        };
        if let (Some(delta), Some(_)) = (deltas[other], &delta_matches) {
            // Term 1: P's new rows that a changed O row matches.
            let exists = format!(
                "EXISTS (SELECT 1 FROM {} WHERE ({cond}))",
                source_item(o_source, other, Some(delta))
            );
            let from = from_where_in(d, &null_extended, |_| None, &[exists]);
            let sign = format!(
                "(CASE WHEN {m} = 0 THEN 1 ELSE 0 END) - (CASE WHEN {old_m} = 0 THEN 1 ELSE 0 END)"
            );
            terms.push(format!("SELECT {} {from}", select(sign)));
        }
        if let Some(delta) = deltas[p] {
            // Term 2: P's changed rows, unmatched in O's old state. When O did not change that
            // is its state now, and an anti-join (which PostgreSQL can hash) says it at once
            // instead of a count per row.
            let relation = |i: usize| (i == p).then_some(delta);
            let sign_p = qi(&sign_column(p));
            let (from, sign) = match &delta_matches {
                None => {
                    let unmatched = format!(
                        "NOT EXISTS (SELECT 1 FROM {} WHERE ({cond}))",
                        source_item(o_source, other, None)
                    );
                    let plain = format!(
                        "{} LEFT JOIN {} ON false",
                        source_slot(p),
                        source_slot(other)
                    );
                    (from_where_in(d, &plain, relation, &[unmatched]), sign_p)
                }
                Some(_) => (
                    from_where_in(d, &null_extended, relation, &[]),
                    format!("{sign_p} * (CASE WHEN {old_m} = 0 THEN 1 ELSE 0 END)"),
                ),
            };
            terms.push(format!("SELECT {} {from}", select(sign)));
        }
    }
    terms
}
