//! Shoal's own connections to the servers by place, for duties that visit them all again and
//! again (recovery of in-doubt transactions, deadlock detection across servers).

use std::collections::HashMap;

use tokio_postgres::Client;

use shoal_catalog::{CatalogError, ConnectParams};
use shoal_route::Place;

/// One connection per server, opened as needed and again once broken.
#[derive(Default)]
pub struct Servers {
    clients: HashMap<Place, Client>,
}

impl Servers {
    /// The connection to `place`, opened now (as `application_name`) if there is none or the
    /// last one broke; a failed attempt leaves no connection for `place`.
    pub async fn connect(
        &mut self,
        place: Place,
        params: &ConnectParams,
        application_name: &str,
    ) -> Result<&Client, CatalogError> {
        if self.clients.get(&place).is_none_or(Client::is_closed) {
            self.clients.remove(&place);
            let client = shoal_catalog::connect(params, application_name).await?;
            self.clients.insert(place, client);
        }
        Ok(&self.clients[&place])
    }

    /// The connection to `place` opened last, if any.
    pub fn get(&self, place: Place) -> Option<&Client> {
        self.clients.get(&place)
    }

    /// The connections that are still open, by place.
    pub fn open(&self) -> impl Iterator<Item = (Place, &Client)> {
        self.clients
            .iter()
            .filter(|(_, c)| !c.is_closed())
            .map(|(p, c)| (*p, c))
    }
}
