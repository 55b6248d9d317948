//! Free TCP ports for test servers.

use std::collections::HashSet;
use std::sync::Mutex;

use rand::Rng;

/// Ports handed out in this process and not yet released, so parallel tests here never
/// pick the same one (other processes are caught by the bind check and start retries).
static RESERVED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A random port in 20000..60000 that is free on 127.0.0.1 now.
pub fn reserve() -> u16 {
    let mut rng = rand::thread_rng();
    let mut guard = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let reserved = guard.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let port = rng.gen_range(20000..60000);
        if !reserved.contains(&port) && shoal_local::port_is_free(port) {
            reserved.insert(port);
            return port;
        }
    }
    panic!("shoal-testkit: found no free TCP port in 20000..60000 on 127.0.0.1");
}

pub fn release(port: u16) {
    let mut guard = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reserved) = guard.as_mut() {
        reserved.remove(&port);
    }
}
