//! What the connecting role may do on a server, checked before an operation needs it, so that
//! a role without a privilege (a managed service's admin user is not a superuser) hears exactly
//! which one is missing before anything changes, not halfway through.
//!
//! The rules are pure ([`Privileges::missing`]); reading them from a server is the I/O half.

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::{ClusterError, PgContext};
use crate::Cluster;
use shoal_catalog::model::Node;

/// One server's answer for the connecting role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Privileges {
    pub role: String,
    pub server_version_num: i32,
    pub superuser: bool,
    /// The REPLICATION attribute: replication slots, and the walsender a subscription or a
    /// move's copy connects to.
    pub replication: bool,
    /// Membership in `pg_create_subscription` (PostgreSQL 16 and newer).
    pub subscription_role: bool,
    /// CREATE on the database: schemas for shards and Shoal's own objects.
    pub create_on_database: bool,
}

/// What Shoal does with a server, and so what it needs there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Shard tables and Shoal's own schema on a node (every node needs this).
    Objects,
    /// A subscription on this server: reference table replicas, and the target of an online
    /// move.
    Subscription,
    /// A walsender for a subscription, or logical slots: the coordinator of reference tables,
    /// the source of an online move, every node of stream tables.
    Replication,
}

impl Privileges {
    pub async fn read(client: &impl GenericClient) -> Result<Privileges, ClusterError> {
        let row = client
            .query_one(
                "SELECT r.rolname::text, current_setting('server_version_num')::int, r.rolsuper,
                        r.rolreplication,
                        EXISTS (SELECT 1 FROM pg_catalog.pg_roles g
                                 WHERE g.rolname = 'pg_create_subscription'
                                   AND pg_catalog.pg_has_role(r.oid, g.oid, 'MEMBER')),
                        pg_catalog.has_database_privilege(current_database(), 'CREATE')
                 FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .context(|| "reading the connecting role's privileges".into())?;
        Ok(Privileges {
            role: row.get(0),
            server_version_num: row.get(1),
            superuser: row.get(2),
            replication: row.get(3),
            subscription_role: row.get(4),
            create_on_database: row.get(5),
        })
    }

    /// What is missing for `need`, in words that say what to grant (None: nothing).
    pub fn missing(&self, need: Need) -> Option<String> {
        if self.superuser {
            return None;
        }
        let role = &self.role;
        match need {
            Need::Objects if !self.create_on_database => Some(format!(
                "role {role} may not create schemas in this database: GRANT CREATE ON DATABASE \
                 <database> TO {role} (or make it the database's owner)"
            )),
            Need::Subscription if self.server_version_num < 160000 => Some(format!(
                "PostgreSQL {} lets only superusers create subscriptions, which reference tables \
                 and online (force_logical) moves use; with role {role}, distribute tables, move \
                 them with --mode block_writes, and use stream tables, or connect as a superuser",
                self.server_version_num / 10000
            )),
            Need::Subscription if !self.subscription_role => Some(format!(
                "role {role} may not create subscriptions, which reference tables and online \
                 (force_logical) moves use: GRANT pg_create_subscription TO {role}"
            )),
            Need::Replication if !self.replication => Some(format!(
                "role {role} lacks the REPLICATION attribute, which logical replication and \
                 change capture need: ALTER ROLE {role} REPLICATION (managed services: grant \
                 their replication role, e.g. rds_replication on Amazon RDS)"
            )),
            _ => None,
        }
    }
}

/// The role's privileges on a node.
pub async fn of_node(cluster: &Cluster, node: &Node) -> Result<Privileges, ClusterError> {
    let client = cluster
        .node_client(node, &format!("{} checking privileges", cluster.label()))
        .await?;
    Privileges::read(&client).await
}

/// Why a subscription on `target` that reads from `source` (None: the coordinator) cannot be
/// made with this role, if it cannot.
pub async fn logical_replication_refused(
    cluster: &Cluster,
    source: Option<&Node>,
    target: &Node,
) -> Result<Option<String>, ClusterError> {
    if let Some(missing) = of_node(cluster, target).await?.missing(Need::Subscription) {
        return Ok(Some(format!("on node {}: {missing}", target.node_id)));
    }
    let source_privileges = match source {
        Some(node) => of_node(cluster, node).await?,
        None => Privileges::read(cluster.client()).await?,
    };
    Ok(source_privileges
        .missing(Need::Replication)
        .map(|missing| match source {
            Some(node) => format!("on node {}: {missing}", node.node_id),
            None => format!("on the coordinator: {missing}"),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(version: i32) -> Privileges {
        Privileges {
            role: "admin".into(),
            server_version_num: version,
            superuser: false,
            replication: true,
            subscription_role: true,
            create_on_database: true,
        }
    }

    #[test]
    fn a_managed_admin_on_16_and_newer_has_what_it_needs() {
        for need in [Need::Objects, Need::Subscription, Need::Replication] {
            assert_eq!(admin(180006).missing(need), None);
        }
    }

    #[test]
    fn postgresql_15_keeps_subscriptions_to_superusers() {
        let missing = admin(150018).missing(Need::Subscription).unwrap();
        assert!(
            missing.contains("PostgreSQL 15 lets only superusers"),
            "{missing}"
        );
        assert!(missing.contains("--mode block_writes"), "{missing}");
        let superuser = Privileges {
            superuser: true,
            ..admin(150018)
        };
        assert_eq!(superuser.missing(Need::Subscription), None);
    }

    #[test]
    fn each_missing_privilege_names_its_grant() {
        let bare = Privileges {
            replication: false,
            subscription_role: false,
            create_on_database: false,
            ..admin(170010)
        };
        assert!(bare
            .missing(Need::Objects)
            .unwrap()
            .contains("GRANT CREATE ON DATABASE"));
        assert!(bare
            .missing(Need::Subscription)
            .unwrap()
            .contains("GRANT pg_create_subscription TO admin"));
        assert!(bare
            .missing(Need::Replication)
            .unwrap()
            .contains("ALTER ROLE admin REPLICATION"));
    }
}
