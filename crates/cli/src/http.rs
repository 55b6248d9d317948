//! The daemon's HTTP endpoint: `/metrics` in Prometheus's text format and `/status` as JSON,
//! both read from the catalog at each request (the catalog is the only source of truth, so any
//! daemon answers for the whole cluster).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::serve::Shutdown;
use shoal_catalog::ConnectParams;
use shoal_cluster::Cluster;
use shoal_endpoint::shared::Shared;

pub async fn serve(
    address: SocketAddr,
    params: ConnectParams,
    endpoint: Option<Arc<Shared>>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "HTTP endpoint listening");
    loop {
        let (mut socket, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.changed() => return Ok(()),
        };
        let params = params.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; 2048];
            let n = socket.read(&mut request).await.unwrap_or(0);
            let line = String::from_utf8_lossy(&request[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match Cluster::connect(params).await {
                Err(error) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("coordinator unavailable: {error}\n"),
                ),
                Ok(cluster) => match path {
                    "/metrics" => match metrics(&cluster).await {
                        Ok(mut text) => {
                            text.push_str(&daemon_metrics());
                            if let Some(endpoint) = &endpoint {
                                text.push_str(&endpoint_metrics(endpoint));
                            }
                            ("200 OK", "text/plain; version=0.0.4", text)
                        }
                        Err(error) => (
                            "500 Internal Server Error",
                            "text/plain",
                            format!("{error}\n"),
                        ),
                    },
                    "/status" => match status(&cluster).await {
                        Ok(json) => ("200 OK", "application/json", json),
                        Err(error) => (
                            "500 Internal Server Error",
                            "text/plain",
                            format!("{error}\n"),
                        ),
                    },
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics or /status\n".to_string(),
                    ),
                },
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

/// This daemon's own counters since it started, besides its endpoint's.
fn daemon_metrics() -> String {
    let cancelled = shoal_cluster::deadlock::watch::COORDINATOR_SESSIONS_CANCELLED
        .load(std::sync::atomic::Ordering::Relaxed);
    let name = "shoal_coordinator_deadlocks_broken_total";
    format!(
        "# HELP {name} Deadlocks across nodes broken by cancelling a coordinator session's \
         statement.\n# TYPE {name} counter\n{name} {cancelled}\n"
    )
}

/// This daemon's endpoint: counters since it started.
fn endpoint_metrics(endpoint: &Shared) -> String {
    let mut out = String::new();
    for (name, help, value) in endpoint.metrics.render(&endpoint.pool) {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn metrics(cluster: &Cluster) -> anyhow::Result<String> {
    let client = cluster.client();
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    gauge(&mut out, "shoal_nodes", "Registered worker nodes.");
    let nodes: i64 = client
        .query_one("SELECT count(*) FROM shoal.node", &[])
        .await?
        .get(0);
    let _ = writeln!(out, "shoal_nodes {nodes}");
    gauge(
        &mut out,
        "shoal_transfers_running",
        "Shard moves and copies not finished.",
    );
    let running: i64 = client
        .query_one(
            "SELECT count(*) FROM shoal.transfer WHERE finished_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    let _ = writeln!(out, "shoal_transfers_running {running}");
    gauge(
        &mut out,
        "shoal_cleanup_records",
        "Objects waiting for cleanup.",
    );
    let records: i64 = client
        .query_one("SELECT count(*) FROM shoal.cleanup_record", &[])
        .await?
        .get(0);
    let _ = writeln!(out, "shoal_cleanup_records {records}");
    gauge(
        &mut out,
        "shoal_change_buffer_rows",
        "Captured changes not yet applied by every stream table.",
    );
    let buffered: i64 = client
        .query_one("SELECT count(*) FROM shoal.change_buffer", &[])
        .await?
        .get(0);
    let _ = writeln!(out, "shoal_change_buffer_rows {buffered}");

    let slots = client
        .query(
            "SELECT w.node_id, coalesce(n.host || ':' || n.port, w.host || ':' || w.port),
                    w.consecutive_failures, w.alert
             FROM shoal.worker_slot w LEFT JOIN shoal.node n USING (node_id) ORDER BY w.node_id",
            &[],
        )
        .await?;
    gauge(
        &mut out,
        "shoal_capture_consecutive_failures",
        "Failed polls of a node's capture slot in a row.",
    );
    for row in &slots {
        let _ = writeln!(
            out,
            "shoal_capture_consecutive_failures{{node_id=\"{}\",address=\"{}\"}} {}",
            row.get::<_, i32>(0),
            label(&row.get::<_, String>(1)),
            row.get::<_, i32>(2)
        );
    }
    gauge(
        &mut out,
        "shoal_capture_alert",
        "1 when a node's capture has failed worker_retry_ticks polls in a row.",
    );
    for row in &slots {
        let _ = writeln!(
            out,
            "shoal_capture_alert{{node_id=\"{}\",address=\"{}\"}} {}",
            row.get::<_, i32>(0),
            label(&row.get::<_, String>(1)),
            i32::from(row.get::<_, bool>(3))
        );
    }

    let streams = client
        .query(
            "SELECT relid::regclass::text, coalesce(extract(epoch FROM now() - last_refresh_at), -1)::float8,
                    coalesce(last_refresh_ms, 0), needs_reinit
             FROM shoal.stream_table ORDER BY stream_id",
            &[],
        )
        .await?;
    gauge(
        &mut out,
        "shoal_stream_seconds_since_refresh",
        "Seconds since the stream table's last refresh (-1: never).",
    );
    for row in &streams {
        let _ = writeln!(
            out,
            "shoal_stream_seconds_since_refresh{{stream=\"{}\"}} {:.3}",
            label(&row.get::<_, String>(0)),
            row.get::<_, f64>(1)
        );
    }
    gauge(
        &mut out,
        "shoal_stream_last_refresh_ms",
        "Duration of the stream table's last refresh.",
    );
    for row in &streams {
        let _ = writeln!(
            out,
            "shoal_stream_last_refresh_ms{{stream=\"{}\"}} {:.3}",
            label(&row.get::<_, String>(0)),
            row.get::<_, f64>(2)
        );
    }
    gauge(
        &mut out,
        "shoal_stream_needs_reinit",
        "1 when the next refresh is a consistent full refresh.",
    );
    for row in &streams {
        let _ = writeln!(
            out,
            "shoal_stream_needs_reinit{{stream=\"{}\"}} {}",
            label(&row.get::<_, String>(0)),
            i32::from(row.get::<_, bool>(3))
        );
    }
    Ok(out)
}

async fn status(cluster: &Cluster) -> anyhow::Result<String> {
    let client = cluster.client();
    let row = client
        .query_one(
            "SELECT json_build_object(
                 'nodes', (SELECT coalesce(json_agg(n ORDER BY node_id), '[]') FROM shoal.nodes n),
                 'transfers', (SELECT coalesce(json_agg(t ORDER BY operation_id), '[]')
                               FROM shoal.rebalance_progress t WHERE t.finished_at IS NULL),
                 'streams', (SELECT coalesce(json_agg(s ORDER BY stream_id, node_id), '[]') FROM shoal.stream_status s),
                 'cleanup_records', (SELECT count(*) FROM shoal.cleanup_record))::text",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label(r#"a"b"#), r#"a\"b"#);
        assert_eq!(label(r"a\b"), r"a\\b");
        assert_eq!(label("a\nb"), "a\\nb");
    }
}
