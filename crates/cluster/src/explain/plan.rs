//! Pure: what a query's two paths do. Through Shoal's endpoint, the router's own decision
//! (one node, split across nodes, or the coordinator, with the reason); through the
//! coordinator, PostgreSQL's plan (EXPLAIN's JSON) summed up by node: what each worker runs
//! for it, how many rows it ships, and what is left for the coordinator to do.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use shoal_route::{Place, Topology};

/// Where Shoal's endpoint runs the query.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum EndpointPath {
    /// On one node, as this statement.
    Routed {
        node: i32,
        colocation: i64,
        shard_index: u32,
        sql: String,
    },
    /// Writes of reference tables only: on the coordinator, where they are authoritative.
    ReferenceWrite,
    /// Every node answers for its shards; the coordinator session merges the rows.
    Split {
        nodes: Vec<SplitPart>,
        merge: String,
    },
    /// Refused before anything runs: the coordinator would run it otherwise than one server
    /// (`shoal_route::coordinator`).
    Refused { reason: String, hint: String },
    /// Relayed to the coordinator.
    Coordinator {
        /// Why one node cannot answer it.
        not_routed: String,
        /// Why it is not split across nodes.
        not_split: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitPart {
    pub node: i32,
    /// Shard statements the node runs (UNION ALL), and the first of them.
    pub shard_statements: usize,
    pub first: String,
}

/// The endpoint's decision for `sql` outside a transaction block, as a session makes it
/// (parameters cannot be bound here: a query with `$n` says why it is not routed).
pub fn endpoint_path(sql: &str, topology: &Topology) -> EndpointPath {
    let not_routed = match shoal_route::plan(sql, topology) {
        Ok(plan) => match plan.bind(&[], topology) {
            Ok(target) => {
                return match target.place {
                    Place::Node(node) => EndpointPath::Routed {
                        node,
                        colocation: target.colocation,
                        shard_index: target.shard_index,
                        sql: target.sql,
                    },
                    Place::Coordinator => EndpointPath::ReferenceWrite,
                }
            }
            Err(reason) => reason.0,
        },
        Err(reason) => reason.0,
    };
    match shoal_route::plan_scatter(sql, topology) {
        Ok(scatter) => EndpointPath::Split {
            nodes: scatter
                .shard_statements
                .iter()
                .map(|(node, parts)| SplitPart {
                    node: *node,
                    shard_statements: parts.len(),
                    first: parts[0].clone(),
                })
                .collect(),
            merge: scatter.merge_shown(),
        },
        Err(reason) => match shoal_route::coordinator_differs(sql, topology) {
            Some(difference) => EndpointPath::Refused {
                reason: difference.message,
                hint: difference.hint,
            },
            None => EndpointPath::Coordinator {
                not_routed,
                not_split: reason.0,
            },
        },
    }
}

/// The coordinator's plan, by where each part runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CoordinatorPlan {
    /// Plan nodes the coordinator runs itself, outermost first, with how many of each.
    pub on_coordinator: Vec<(String, usize)>,
    /// Per worker node (`None`: a foreign table Shoal does not know), in node order.
    pub on_nodes: Vec<NodeWork>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeWork {
    pub node: Option<i32>,
    /// Remote queries it answers.
    pub remote_queries: usize,
    /// What they push down beyond a plain scan: `join`, `aggregate`, `sort`, `limit`.
    pub pushed_down: Vec<String>,
    /// Rows they ship to the coordinator: the planner's estimate, and with ANALYZE the count.
    pub rows_estimated: f64,
    pub rows_actual: Option<f64>,
    /// The first of its remote queries.
    pub example: String,
}

/// Sums up EXPLAIN (VERBOSE, FORMAT JSON) output; `foreign_tables` maps the coordinator's
/// foreign tables (`schema.name` as EXPLAIN VERBOSE writes them) to their nodes.
pub fn summarize(explain: &Value, foreign_tables: &HashMap<String, i32>) -> CoordinatorPlan {
    let mut plan = CoordinatorPlan::default();
    let root = explain
        .get(0)
        .and_then(|e| e.get("Plan"))
        .unwrap_or(&Value::Null);
    walk(root, foreign_tables, &mut plan);
    plan.on_nodes.sort_by_key(|w| w.node.unwrap_or(i32::MAX));
    plan
}

fn walk(node: &Value, foreign_tables: &HashMap<String, i32>, plan: &mut CoordinatorPlan) {
    let Some(kind) = node.get("Node Type").and_then(Value::as_str) else {
        return;
    };
    if kind == "Foreign Scan" {
        foreign_scan(node, foreign_tables, plan);
    } else {
        let label = match node.get("Partial Mode").and_then(Value::as_str) {
            Some(mode) if mode != "Simple" => format!("{kind} ({mode})"),
            _ => kind.to_string(),
        };
        match plan.on_coordinator.iter_mut().find(|(k, _)| *k == label) {
            Some((_, count)) => *count += 1,
            None => plan.on_coordinator.push((label, 1)),
        }
    }
    for child in node
        .get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(child, foreign_tables, plan);
    }
}

fn foreign_scan(node: &Value, foreign_tables: &HashMap<String, i32>, plan: &mut CoordinatorPlan) {
    let text = |key: &str| node.get(key).and_then(Value::as_str).unwrap_or("");
    let number = |key: &str| node.get(key).and_then(Value::as_f64);
    // A plain scan names its relation; a pushed-down join or aggregate lists them in
    // "Relations" (`Aggregate on ((public.a_1 a) INNER JOIN (public.b_1 b))`).
    let named = format!("{}.{}", text("Schema"), text("Relation Name"));
    let relations = text("Relations");
    let on = foreign_tables.get(&named).copied().or_else(|| {
        relations
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .find_map(|token| foreign_tables.get(token).copied())
    });
    let remote = text("Remote SQL");
    let mut pushed = Vec::new();
    if relations.contains("Aggregate on") {
        pushed.push("aggregate");
    }
    if relations.contains(" JOIN ") {
        pushed.push("join");
    }
    if remote.contains(" ORDER BY ") {
        pushed.push("sort");
    }
    if remote.contains(" LIMIT ") {
        pushed.push("limit");
    }
    let loops = number("Actual Loops").unwrap_or(1.0);
    let actual = number("Actual Rows").map(|rows| rows * loops);
    let estimated = number("Plan Rows").unwrap_or(0.0);
    let work = match plan.on_nodes.iter_mut().find(|w| w.node == on) {
        Some(work) => work,
        None => {
            plan.on_nodes.push(NodeWork {
                node: on,
                remote_queries: 0,
                pushed_down: Vec::new(),
                rows_estimated: 0.0,
                rows_actual: None,
                example: remote.to_string(),
            });
            plan.on_nodes.last_mut().expect("just pushed")
        }
    };
    work.remote_queries += 1;
    work.rows_estimated += estimated;
    if let Some(actual) = actual {
        work.rows_actual = Some(work.rows_actual.unwrap_or(0.0) + actual);
    }
    for p in pushed {
        if !work.pushed_down.iter().any(|q| q == p) {
            work.pushed_down.push(p.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    use super::*;
    use shoal_route::{Distribution, KeyType, Placement, Shard, Table};
    use shoal_sql::QualifiedName;

    fn topology() -> Topology {
        let name = |t: &str| QualifiedName::new("public", t);
        let orders = Table {
            columns: vec!["id".into(), "amount".into()],
            with_defaults: Vec::new(),
            placement: Placement::Distributed(Distribution {
                key: Some(("id".into(), KeyType::Int8)),
                colocation: 1,
                shards: (0..4)
                    .map(|i| Shard {
                        node: 1 + (i % 2),
                        table: name(&format!("orders_{}", 100 + i)),
                        shard_id: 100 + i64::from(i),
                    })
                    .collect(),
            }),
        };
        Topology {
            search_path: vec!["public".into()],
            tables: Arc::new(HashMap::from([(name("orders"), orders)])),
            builtin_functions: Arc::new(
                ["count"]
                    .into_iter()
                    .map(String::from)
                    .collect::<HashSet<_>>(),
            ),
            node_versions: Arc::default(),
        }
    }

    #[test]
    fn the_endpoint_path_is_the_routers_decision() {
        let t = topology();
        assert!(matches!(
            endpoint_path("SELECT * FROM orders WHERE id = 7", &t),
            EndpointPath::Routed { .. }
        ));
        let EndpointPath::Split { nodes, merge } = endpoint_path("SELECT count(*) FROM orders", &t)
        else {
            panic!("a count is split");
        };
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].shard_statements, 2);
        assert_eq!(
            nodes[0].first,
            "SELECT count(*) AS c0 FROM public.orders_100 orders"
        );
        assert_eq!(
            merge,
            "SELECT sum(p.c0)::bigint AS \"count\" FROM <the nodes' rows> p(c0)"
        );
        let EndpointPath::Coordinator {
            not_routed,
            not_split,
        } = endpoint_path("SELECT id FROM orders", &t)
        else {
            panic!("a whole-table read goes to the coordinator");
        };
        assert!(not_routed.contains("not pinned"), "{not_routed}");
        assert!(not_split.contains("without an aggregate"), "{not_split}");
        let EndpointPath::Refused { reason, hint } = endpoint_path(
            "INSERT INTO orders VALUES (1, 2), (2, 3) ON CONFLICT (id) DO NOTHING",
            &t,
        ) else {
            panic!("an upsert over several shards is refused");
        };
        assert!(reason.contains("public.orders"), "{reason}");
        assert!(!hint.is_empty());
    }

    #[test]
    fn a_plan_is_summed_up_by_node_with_what_each_pushes_down_and_ships() {
        let explain = serde_json::json!([{
            "Plan": {
                "Node Type": "Aggregate", "Partial Mode": "Simple",
                "Plans": [{
                    "Node Type": "Append",
                    "Plans": [
                        {"Node Type": "Foreign Scan", "Schema": "public", "Relation Name": "orders_p0",
                         "Remote SQL": "SELECT NULL FROM public.orders_100", "Plan Rows": 10.0,
                         "Actual Rows": 12.0, "Actual Loops": 1.0},
                        {"Node Type": "Foreign Scan",
                         "Relations": "Aggregate on ((public.orders_p1 o) INNER JOIN (public.items_p1 i))",
                         "Remote SQL": "SELECT count(*) FROM (public.orders_101 o INNER JOIN public.items_101 i ON ...) ORDER BY 1 LIMIT 3",
                         "Plan Rows": 1.0, "Actual Rows": 1.0, "Actual Loops": 1.0},
                        {"Node Type": "Foreign Scan", "Schema": "public", "Relation Name": "orders_p2",
                         "Remote SQL": "SELECT NULL FROM public.orders_102", "Plan Rows": 5.0,
                         "Actual Rows": 4.0, "Actual Loops": 1.0}
                    ]
                }]
            }
        }]);
        let tables = HashMap::from([
            ("public.orders_p0".to_string(), 1),
            ("public.orders_p1".to_string(), 2),
            ("public.orders_p2".to_string(), 1),
        ]);
        let plan = summarize(&explain, &tables);
        assert_eq!(
            plan.on_coordinator,
            [("Aggregate".to_string(), 1), ("Append".to_string(), 1)]
        );
        assert_eq!(plan.on_nodes.len(), 2);
        let first = &plan.on_nodes[0];
        assert_eq!(
            (
                first.node,
                first.remote_queries,
                first.rows_estimated,
                first.rows_actual
            ),
            (Some(1), 2, 15.0, Some(16.0))
        );
        assert!(first.pushed_down.is_empty());
        assert_eq!(first.example, "SELECT NULL FROM public.orders_100");
        assert_eq!(
            plan.on_nodes[1].pushed_down,
            ["aggregate", "join", "sort", "limit"]
        );
    }
}
