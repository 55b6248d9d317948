//! `shoal explain`: prints `shoal_cluster::explain`'s account of a query's two paths.

use crate::args::ExplainArgs;
use crate::output::print_json;
use shoal_cluster::explain::{self, EndpointPath, Explanation};
use shoal_cluster::Cluster;

pub async fn run(cluster: &Cluster, args: &ExplainArgs) -> anyhow::Result<()> {
    let explanation = explain::explain(cluster.client(), &args.sql, args.analyze).await?;
    if args.json.json {
        return print_json(&explanation);
    }
    print!("{}", render(&explanation, args.plan));
    Ok(())
}

fn render(e: &Explanation, with_plan: bool) -> String {
    let address = |node: i32| {
        e.nodes.iter().find(|n| n.node == node).map_or_else(
            || format!("node {node}"),
            |n| format!("node {node} ({})", n.address),
        )
    };
    let mut out = String::new();
    match &e.endpoint {
        EndpointPath::Routed {
            node,
            colocation,
            shard_index,
            sql,
        } => {
            out.push_str(&format!(
                "Through Shoal's endpoint: on {} alone (shard {shard_index} of colocation group \
                 {colocation}), as\n    {sql}\n",
                address(*node)
            ));
        }
        EndpointPath::ReferenceWrite => out.push_str(
            "Through Shoal's endpoint: on the coordinator (it writes reference tables only, \
             whose authoritative copies are there)\n",
        ),
        EndpointPath::Split { nodes, merge } => {
            out.push_str(&format!(
                "Through Shoal's endpoint: split across {} nodes, their rows merged on the \
                 coordinator session (each node answers on up to `shoal serve \
                 --scatter-connections` connections, default 4, without parallel workers)\n",
                nodes.len()
            ));
            for part in nodes {
                out.push_str(&format!(
                    "  {}: {} shard statement(s), the first:\n      {}\n",
                    address(part.node),
                    part.shard_statements,
                    part.first
                ));
            }
            out.push_str(&format!("  merge: {merge}\n"));
        }
        EndpointPath::Coordinator {
            not_routed,
            not_split,
        } => out.push_str(&format!(
            "Through Shoal's endpoint: relayed to the coordinator (below)\n  not on one node: \
             {not_routed}\n  not split across the nodes: {not_split}\n"
        )),
        EndpointPath::Refused { reason, hint } => out.push_str(&format!(
            "Through Shoal's endpoint: refused before anything runs (SQLSTATE 0A000): \
             {reason}\n  hint: {hint}\n"
        )),
    }
    if let Some(error) = &e.coordinator_error {
        out.push_str(&format!(
            "\nThrough the coordinator: PostgreSQL refuses it: {error}\n"
        ));
        return out;
    }
    let figures = if e.analyzed {
        "rows counted"
    } else {
        "rows estimated; --analyze counts them"
    };
    out.push_str(&format!("\nThrough the coordinator ({figures}):\n"));
    for work in &e.coordinator.on_nodes {
        let node = work.node.map_or_else(
            || "a foreign server Shoal does not know".to_string(),
            address,
        );
        let pushed = if work.pushed_down.is_empty() {
            "scans only".to_string()
        } else {
            format!("pushed down: {}", work.pushed_down.join(", "))
        };
        let rows = work.rows_actual.unwrap_or(work.rows_estimated);
        out.push_str(&format!(
            "  {node}: {} remote quer{}, {pushed}; ships {rows:.0} row(s)\n      {}\n",
            work.remote_queries,
            if work.remote_queries == 1 { "y" } else { "ies" },
            work.example
        ));
    }
    if e.coordinator.on_nodes.is_empty() {
        out.push_str("  no worker is asked (the coordinator answers alone)\n");
    }
    let own: Vec<String> = e
        .coordinator
        .on_coordinator
        .iter()
        .map(|(kind, n)| {
            if *n == 1 {
                kind.clone()
            } else {
                format!("{kind} x{n}")
            }
        })
        .collect();
    out.push_str(&format!(
        "  on the coordinator: {}\n",
        if own.is_empty() {
            "nothing beyond collecting the rows".to_string()
        } else {
            own.join(", ")
        }
    ));
    if with_plan {
        out.push_str(&format!("\n{}\n", e.coordinator_plan));
    }
    out
}
