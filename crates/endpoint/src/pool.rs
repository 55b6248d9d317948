//! Shoal's own connections to every server, reused across client sessions. A connection goes
//! back only when it is idle outside a transaction; settings a session copied onto it are
//! remembered, so the next session changes only what differs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use crate::error::EndpointError;
use crate::server::{self, ServerConn};
use shoal_catalog::ConnectParams;
use shoal_route::Place;

/// Idle connections kept per server; more are opened on demand and closed when returned.
const IDLE_PER_SERVER: usize = 32;

pub struct Pooled {
    pub conn: ServerConn,
    /// The session settings applied to it (`set_config`), in `SessionSettings` order.
    pub settings: Vec<(String, String)>,
    /// Whether it may go back to the pool (no error left it in an unknown state).
    pub reusable: bool,
}

#[derive(Default)]
pub struct Pool {
    targets: RwLock<HashMap<Place, ConnectParams>>,
    idle: Mutex<HashMap<Place, Vec<Pooled>>>,
    pub open: AtomicUsize,
    pub in_use: AtomicUsize,
}

impl Pool {
    /// The servers and how to reach them as Shoal's role; connections to servers that left
    /// are dropped.
    pub fn set_targets(&self, targets: HashMap<Place, ConnectParams>) {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain(|place, _| targets.contains_key(place));
        *self.targets.write().expect("pool lock") = targets;
    }

    pub fn nodes(&self) -> Vec<(Place, ConnectParams)> {
        let targets = self.targets.read().expect("pool lock");
        let mut all: Vec<_> = targets.iter().map(|(p, c)| (*p, c.clone())).collect();
        all.sort_by_key(|(p, _)| *p);
        all
    }

    pub async fn get(&self, place: Place) -> Result<Pooled, EndpointError> {
        let idle = self
            .idle
            .lock()
            .expect("pool lock")
            .get_mut(&place)
            .and_then(Vec::pop);
        self.in_use.fetch_add(1, Ordering::Relaxed);
        if let Some(pooled) = idle {
            return Ok(pooled);
        }
        let params = self.targets.read().expect("pool lock").get(&place).cloned();
        let Some(params) = params else {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
            return Err(EndpointError::Protocol(format!(
                "{place:?} is not a server of the cluster (the topology changed)"
            )));
        };
        match server::connect(&params, "shoal endpoint").await {
            Ok(conn) => {
                self.open.fetch_add(1, Ordering::Relaxed);
                Ok(Pooled {
                    conn,
                    settings: Vec::new(),
                    reusable: true,
                })
            }
            Err(error) => {
                self.in_use.fetch_sub(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    pub fn put(&self, place: Place, pooled: Pooled) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        if !pooled.reusable || pooled.conn.status != b'I' {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let known = self.targets.read().expect("pool lock").contains_key(&place);
        let list = idle.entry(place).or_default();
        if known && list.len() < IDLE_PER_SERVER {
            list.push(pooled);
        } else {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
