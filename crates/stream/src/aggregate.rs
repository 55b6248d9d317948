//! Differential refresh of a grouped query: per-group deltas folded into the stored aggregate
//! state, MIN/MAX rescans of the groups whose extreme may be gone, one `MERGE`.

use crate::distinct;
use crate::expr::AggFunc;
use crate::plan::{hidden_agg, hidden_key, ColumnRole, Differential, Grouping, QueryPlan};
use crate::refresh::{
    agg_call, agg_column, delta_terms, from_where, hidden_aggregates, hidden_hit, hidden_nn,
    hidden_sum, hit_test, k, key_column, needs_nn, qc, qi, row_hash, x, DeltaRelations,
    COUNT_COLUMN, DELTA_COLUMN, ROW_ID_COLUMN,
};
use shoal_sql::QualifiedName;

/// `CASE` adding a delta to a running value, where either may be NULL (no value yet / no
/// non-null input in the delta) and the result is NULL when no non-null input remains.
fn add_nullable(nonnull_count: &str, old: &str, delta: &str) -> String {
    format!(
        "CASE WHEN {nonnull_count} = 0 THEN NULL WHEN {old} IS NULL THEN {delta} \
         WHEN {delta} IS NULL THEN {old} ELSE {old} + {delta} END"
    )
}

/// With grouping: per group, fold the signed rows into count/sum deltas and the extremes of the
/// inserted and deleted values; combine them with the stored state; recompute MIN/MAX from the
/// sources for the groups whose extreme may have been deleted; merge.
pub(crate) fn aggregate_merge(
    plan: &QueryPlan,
    d: &Differential,
    g: &Grouping,
    table: &QualifiedName,
    deltas: &[Option<&DeltaRelations>],
) -> Option<String> {
    let nk = g.keys.len();
    let mut items: Vec<(String, String)> = g
        .keys
        .iter()
        .enumerate()
        .map(|(i, key)| (k(i), key.expr.clone()))
        .collect();
    for (j, a) in g.aggregates.iter().enumerate() {
        match &a.arg {
            Some(arg) if !a.func.whole_call() => items.push((x(j), arg.clone())),
            _ => {}
        }
    }
    let terms = delta_terms(d, &items, deltas)?;
    let global = nk == 0;
    let q = |alias: &str, col: &str| qc(alias, col);
    let delta = qi(DELTA_COLUMN);
    let ks: Vec<String> = (0..nk).map(|i| qi(&k(i))).collect();

    // __shoal_g: per-group deltas.
    let mut g_items: Vec<String> = ks.clone();
    g_items.push(format!("sum({delta})::bigint AS {}", qi("__shoal_dcount")));
    for (j, a) in g.aggregates.iter().enumerate() {
        let xj = qi(&x(j));
        let nn = format!(
            "sum(CASE WHEN {xj} IS NOT NULL THEN {delta} ELSE 0 END)::bigint AS {}",
            qi(&format!("__shoal_dnn{}", j + 1))
        );
        match a.func {
            AggFunc::CountStar => {}
            AggFunc::Count => g_items.push(nn),
            AggFunc::Sum | AggFunc::Avg => {
                g_items.push(nn);
                g_items.push(format!(
                    "sum({xj} * {delta}) AS {}",
                    qi(&format!("__shoal_dsum{}", j + 1))
                ));
            }
            // Kept by its values table (`distinct.rs`), joined in below.
            AggFunc::CountDistinct => {}
            AggFunc::SumDistinct | AggFunc::AvgDistinct => {
                // Any non-NULL value coming or going may change the set of distinct values.
                g_items.push(format!(
                    "count({xj}) AS {}",
                    qi(&format!("__shoal_touch{}", j + 1))
                ));
            }
            AggFunc::StringAgg | AggFunc::ArrayAgg => {
                // Any row coming or going may change the result (its place in the order too).
                g_items.push(format!(
                    "count(*) AS {}",
                    qi(&format!("__shoal_touch{}", j + 1))
                ));
            }
            AggFunc::BoolAnd | AggFunc::BoolOr => {
                g_items.push(nn);
                let test = hit_test(a.func).unwrap_or_default();
                g_items.push(format!(
                    "sum(CASE WHEN {xj} {test} THEN {delta} ELSE 0 END)::bigint AS {}",
                    qi(&format!("__shoal_dhit{}", j + 1))
                ));
            }
            AggFunc::Min | AggFunc::Max => {
                let f = if a.func == AggFunc::Min { "min" } else { "max" };
                g_items.push(format!(
                    "{f}({xj}) FILTER (WHERE {delta} > 0) AS {}",
                    qi(&format!("__shoal_ins{}", j + 1))
                ));
                g_items.push(format!(
                    "{f}({xj}) FILTER (WHERE {delta} < 0) AS {}",
                    qi(&format!("__shoal_del{}", j + 1))
                ));
            }
        }
    }
    let g_cte = if global {
        // Without GROUP BY the aggregate yields a row even for no input; keep only real deltas.
        format!(
            "SELECT {} FROM {} HAVING count(*) > 0",
            g_items.join(", "),
            qi("__shoal_d")
        )
    } else {
        format!(
            "SELECT {} FROM {} GROUP BY {}",
            g_items.join(", "),
            qi("__shoal_d"),
            ks.join(", ")
        )
    };

    // __shoal_j: the deltas next to the stored state of their group.
    let key_cols: Vec<String> = (0..nk).map(|i| key_column(plan, g, i)).collect();
    let g_ks: Vec<String> = (0..nk).map(|i| q("__shoal_g", &k(i))).collect();
    let mut j_items = vec![format!("{}.*", qi("__shoal_g"))];
    if !global {
        j_items.push(format!("{} AS {}", row_hash(&g_ks), qi("__shoal_rid")));
    }
    j_items.push(format!(
        "{} AS {}",
        q("__shoal_t", COUNT_COLUMN),
        qi("__shoal_ocount")
    ));
    for (j, a) in g.aggregates.iter().enumerate() {
        let col = &agg_column(plan, g, j);
        j_items.push(format!(
            "{} AS {}",
            q("__shoal_t", col),
            qi(&format!("__shoal_o{}", j + 1))
        ));
        if needs_nn(a.func) {
            j_items.push(format!(
                "{} AS {}",
                q("__shoal_t", &hidden_nn(j)),
                qi(&format!("__shoal_onn{}", j + 1))
            ));
        }
        if a.func == AggFunc::Avg {
            j_items.push(format!(
                "{} AS {}",
                q("__shoal_t", &hidden_sum(j)),
                qi(&format!("__shoal_osum{}", j + 1))
            ));
        }
        if hit_test(a.func).is_some() {
            j_items.push(format!(
                "{} AS {}",
                q("__shoal_t", &hidden_hit(j)),
                qi(&format!("__shoal_ohit{}", j + 1))
            ));
        }
    }
    let j_on = if global {
        "true".to_string()
    } else {
        let mut on = vec![format!(
            "{} = {}",
            q("__shoal_t", ROW_ID_COLUMN),
            row_hash(&g_ks)
        )];
        for (i, col) in key_cols.iter().enumerate() {
            on.push(format!(
                "{} IS NOT DISTINCT FROM {}",
                q("__shoal_t", col),
                g_ks[i]
            ));
        }
        on.join(" AND ")
    };
    let mut j_from = format!(
        "{} LEFT JOIN {} AS {} ON {}",
        qi("__shoal_g"),
        table.quoted(),
        qi("__shoal_t"),
        j_on
    );
    let mut count_ctes = Vec::new();
    for j in distinct::counted(g) {
        let cv = format!("__shoal_cv{}", j + 1);
        count_ctes.extend(distinct::count_change_ctes(g, j, table));
        j_items.push(qc(&cv, &format!("__shoal_dd{}", j + 1)));
        let mut on = vec![if global {
            "true".to_string()
        } else {
            format!("{} = {}", qc(&cv, "__shoal_rid"), row_hash(&g_ks))
        }];
        for (i, gk) in g_ks.iter().enumerate() {
            on.push(format!("{} IS NOT DISTINCT FROM {gk}", qc(&cv, &k(i))));
        }
        j_from.push_str(&format!(" LEFT JOIN {} ON {}", qi(&cv), on.join(" AND ")));
    }
    let j_cte = format!("SELECT {} FROM {j_from}", j_items.join(", "));

    // __shoal_n: the new state of each touched group.
    let jc = |name: String| qi(&name);
    let ncount = format!(
        "COALESCE({}, 0) + {}",
        qi("__shoal_ocount"),
        qi("__shoal_dcount")
    );
    let mut n_items: Vec<String> = ks.clone();
    if !global {
        n_items.push(qi("__shoal_rid"));
    }
    n_items.push(format!("{ncount} AS {}", qi("__shoal_ncount")));
    let mut rescan_flags = Vec::new();
    for (j, a) in g.aggregates.iter().enumerate() {
        let n = j + 1;
        let old = jc(format!("__shoal_o{n}"));
        let nn_new = format!(
            "(COALESCE({}, 0) + {})",
            jc(format!("__shoal_onn{n}")),
            jc(format!("__shoal_dnn{n}"))
        );
        let dsum = jc(format!("__shoal_dsum{n}"));
        let value = match a.func {
            AggFunc::CountStar => format!("COALESCE({old}, 0) + {}", qi("__shoal_dcount")),
            AggFunc::Count => format!("COALESCE({old}, 0) + {}", jc(format!("__shoal_dnn{n}"))),
            AggFunc::Sum => {
                n_items.push(format!("{nn_new} AS {}", jc(format!("__shoal_nnn{n}"))));
                add_nullable(&nn_new, &old, &dsum)
            }
            AggFunc::Avg => {
                n_items.push(format!("{nn_new} AS {}", jc(format!("__shoal_nnn{n}"))));
                let sum = add_nullable(&nn_new, &jc(format!("__shoal_osum{n}")), &dsum);
                n_items.push(format!("{sum} AS {}", jc(format!("__shoal_nsum{n}"))));
                format!("CASE WHEN {nn_new} = 0 THEN NULL ELSE ({sum}) / {nn_new} END")
            }
            AggFunc::Min | AggFunc::Max => {
                let (f, cmp) = if a.func == AggFunc::Min {
                    ("LEAST", "<=")
                } else {
                    ("GREATEST", ">=")
                };
                // The candidate is the old extreme or a better inserted value. It stands
                // unless a deleted value is at least as extreme: then it may be gone.
                let candidate = format!("{f}({old}, {})", jc(format!("__shoal_ins{n}")));
                let del = jc(format!("__shoal_del{n}"));
                rescan_flags.push(format!(
                    "({del} IS NOT NULL AND ({candidate} IS NULL OR {del} {cmp} {candidate}))"
                ));
                candidate
            }
            AggFunc::BoolAnd | AggFunc::BoolOr => {
                n_items.push(format!("{nn_new} AS {}", jc(format!("__shoal_nnn{n}"))));
                let hits = format!(
                    "(COALESCE({}, 0) + {})",
                    jc(format!("__shoal_ohit{n}")),
                    jc(format!("__shoal_dhit{n}"))
                );
                n_items.push(format!("{hits} AS {}", jc(format!("__shoal_nhit{n}"))));
                // AND is true without a false input, OR with a true one; NULL without input.
                let cmp = if a.func == AggFunc::BoolAnd {
                    "= 0"
                } else {
                    "> 0"
                };
                format!("CASE WHEN {nn_new} = 0 THEN NULL ELSE {hits} {cmp} END")
            }
            AggFunc::CountDistinct => format!(
                "COALESCE({old}, 0) + COALESCE({}, 0)",
                jc(format!("__shoal_dd{n}"))
            ),
            AggFunc::SumDistinct
            | AggFunc::AvgDistinct
            | AggFunc::StringAgg
            | AggFunc::ArrayAgg => {
                rescan_flags.push(format!("{} > 0", jc(format!("__shoal_touch{n}"))));
                old
            }
        };
        n_items.push(format!("{value} AS {}", jc(format!("__shoal_n{n}"))));
    }
    let has_rescan = !rescan_flags.is_empty();
    if has_rescan {
        n_items.push(format!(
            "({ncount} > 0 AND ({})) AS {}",
            rescan_flags.join(" OR "),
            qi("__shoal_rescan")
        ));
    }
    let n_cte = format!("SELECT {} FROM {}", n_items.join(", "), qi("__shoal_j"));

    let mut ctes = vec![
        format!("{} AS ({terms})", qi("__shoal_d")),
        format!("{} AS ({g_cte})", qi("__shoal_g")),
    ];
    ctes.extend(count_ctes);
    ctes.push(format!("{} AS ({j_cte})", qi("__shoal_j")));
    ctes.push(format!("{} AS ({n_cte})", qi("__shoal_n")));

    // __shoal_r: MIN/MAX and DISTINCT aggregates recomputed from the sources' new state for the
    // flagged groups only.
    if has_rescan {
        let mut r_aggs = Vec::new();
        for (j, a) in g.aggregates.iter().enumerate() {
            if a.func.rescans() {
                r_aggs.push(format!(
                    "{} AS {}",
                    agg_call(a),
                    qi(&format!("__shoal_m{}", j + 1))
                ));
            }
        }
        let n = qi("__shoal_n");
        let rescan = q("__shoal_n", "__shoal_rescan");
        let r_cte = if global {
            // Gated by a one-time filter: the sources are only read when the row is flagged.
            format!(
                "SELECT {} {}",
                r_aggs.join(", "),
                from_where(d, &[format!("(SELECT bool_or({rescan}) FROM {n})")])
            )
        } else {
            let key_exprs: Vec<String> = g.keys.iter().map(|key| key.expr.clone()).collect();
            let mut head: Vec<String> = key_exprs
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{e} AS {}", qi(&k(i))))
                .collect();
            head.push(format!("{} AS {}", row_hash(&key_exprs), qi("__shoal_rid")));
            head.extend(r_aggs.iter().cloned());
            let n_keys: Vec<String> = (0..nk).map(|i| q("__shoal_n", &k(i))).collect();
            let nonnull: Vec<String> = n_keys.iter().map(|k| format!("{k} IS NOT NULL")).collect();
            let nonnull = nonnull.join(" AND ");
            let branch = |flagged: String, key_match: String| {
                // The uncorrelated bool_or is a one-time filter: no flagged group, no scan.
                format!(
                    "SELECT {} {} GROUP BY {}",
                    head.join(", "),
                    from_where(
                        d,
                        &[key_match, format!("(SELECT bool_or({flagged}) FROM {n})")]
                    ),
                    key_exprs.join(", ")
                )
            };
            // All flagged groups in one pass over the sources: a semi-join on the plain key
            // values, which can use indexes and partition pruning, or one scan without them.
            // Each key is also compared with the array of the flagged groups' values: the
            // array is computed once, before the scan, so it is a parameter that postgres_fdw
            // sends to the workers, which then read only those groups (the semi-join itself
            // stays on the coordinator and reads every row of a distributed source).
            let flagged = format!("{rescan} AND {nonnull}");
            let mut key_match: Vec<String> = key_exprs
                .iter()
                .zip(&n_keys)
                .map(|(e, nk)| format!("({e}) = ANY (ARRAY(SELECT {nk} FROM {n} WHERE {flagged}))"))
                .collect();
            key_match.push(format!(
                "({}) IN (SELECT {} FROM {n} WHERE {flagged})",
                key_exprs.join(", "),
                n_keys.join(", ")
            ));
            let plain = branch(flagged.clone(), key_match.join(" AND "));
            // Groups with a NULL key need IS NOT DISTINCT FROM, which no index serves; rare.
            let flagged_null = format!("{rescan} AND NOT ({nonnull})");
            let null_match: Vec<String> = key_exprs
                .iter()
                .zip(&n_keys)
                .map(|(e, nk)| format!("({e}) IS NOT DISTINCT FROM {nk}"))
                .collect();
            let nulls = branch(
                flagged_null.clone(),
                format!(
                    "EXISTS (SELECT 1 FROM {n} WHERE {flagged_null} AND {})",
                    null_match.join(" AND ")
                ),
            );
            format!("{plain} UNION ALL {nulls}")
        };
        ctes.push(format!("{} AS ({r_cte})", qi("__shoal_r")));
    }

    // The MERGE source: new state plus rescanned extremes.
    let mut s_items = vec![format!("{}.*", qi("__shoal_n"))];
    for (j, a) in g.aggregates.iter().enumerate() {
        if a.func.rescans() {
            s_items.push(q("__shoal_r", &format!("__shoal_m{}", j + 1)));
        }
    }
    let r_on = if global {
        "true".to_string()
    } else {
        let mut on = vec![format!(
            "{} = {}",
            q("__shoal_r", "__shoal_rid"),
            q("__shoal_n", "__shoal_rid")
        )];
        for i in 0..nk {
            on.push(format!(
                "{} IS NOT DISTINCT FROM {}",
                q("__shoal_r", &k(i)),
                q("__shoal_n", &k(i))
            ));
        }
        on.join(" AND ")
    };
    let source = if has_rescan {
        format!(
            "(SELECT {} FROM {} LEFT JOIN {} ON {})",
            s_items.join(", "),
            qi("__shoal_n"),
            qi("__shoal_r"),
            r_on
        )
    } else {
        qi("__shoal_n")
    };

    let s = |col: &str| q("__shoal_s", col);
    let ncount_s = s("__shoal_ncount");
    let merge_on = if global {
        "true".to_string()
    } else {
        let mut on = vec![format!(
            "{} = {}",
            q("__shoal_t", ROW_ID_COLUMN),
            s("__shoal_rid")
        )];
        for (i, col) in key_cols.iter().enumerate() {
            on.push(format!(
                "{} IS NOT DISTINCT FROM {}",
                q("__shoal_t", col),
                s(&k(i))
            ));
        }
        on.join(" AND ")
    };
    let agg_value = |j: usize| {
        let n = j + 1;
        let func = g.aggregates[j].func;
        if func.rescans() {
            // No rows left: what these aggregates of nothing are.
            format!(
                "CASE WHEN {ncount_s} <= 0 THEN NULL WHEN {} THEN {} ELSE {} END",
                s("__shoal_rescan"),
                s(&format!("__shoal_m{n}")),
                s(&format!("__shoal_n{n}"))
            )
        } else {
            s(&format!("__shoal_n{n}"))
        }
    };
    let mut sets = vec![format!("{} = {ncount_s}", qi(COUNT_COLUMN))];
    let mut cols = Vec::new();
    let mut vals = Vec::new();
    for c in &plan.columns {
        cols.push(qi(&c.name));
        vals.push(match c.role {
            ColumnRole::Key(i) => s(&k(i)),
            ColumnRole::Aggregate(j) => agg_value(j),
            ColumnRole::Plain => "NULL".into(),
        });
        if let ColumnRole::Aggregate(j) = c.role {
            sets.push(format!("{} = {}", qi(&c.name), agg_value(j)));
        }
    }
    for (i, key) in g.keys.iter().enumerate() {
        if key.column.is_none() {
            cols.push(qi(&hidden_key(i)));
            vals.push(s(&k(i)));
        }
    }
    for j in hidden_aggregates(g) {
        cols.push(qi(&hidden_agg(j)));
        vals.push(agg_value(j));
        sets.push(format!("{} = {}", qi(&hidden_agg(j)), agg_value(j)));
    }
    // A hidden counter column of aggregate state: inserted with, and set to, its new value.
    let mut store = |column: String, new_value: String| {
        let value = s(&new_value);
        sets.push(format!("{} = {value}", qi(&column)));
        cols.push(qi(&column));
        vals.push(value);
    };
    for (j, a) in g.aggregates.iter().enumerate() {
        let n = j + 1;
        if needs_nn(a.func) {
            store(hidden_nn(j), format!("__shoal_nnn{n}"));
        }
        if a.func == AggFunc::Avg {
            store(hidden_sum(j), format!("__shoal_nsum{n}"));
        }
        if hit_test(a.func).is_some() {
            store(hidden_hit(j), format!("__shoal_nhit{n}"));
        }
    }
    cols.push(qi(COUNT_COLUMN));
    vals.push(ncount_s.clone());
    // A group with no rows left disappears; the single row of an aggregate without GROUP BY
    // stays (count 0, sums NULL), as the query would return it.
    let delete = if global {
        String::new()
    } else {
        format!("WHEN MATCHED AND {ncount_s} <= 0 THEN DELETE ")
    };
    let insert_cond = if global {
        String::new()
    } else {
        format!(" AND {ncount_s} > 0")
    };
    Some(format!(
        "WITH {} MERGE INTO {} AS {} USING {source} AS {} ON {merge_on} {delete}\
         WHEN MATCHED THEN UPDATE SET {} \
         WHEN NOT MATCHED{insert_cond} THEN INSERT ({}) VALUES ({})",
        ctes.join(", "),
        table.quoted(),
        qi("__shoal_t"),
        qi("__shoal_s"),
        sets.join(", "),
        cols.join(", "),
        vals.join(", ")
    ))
}
