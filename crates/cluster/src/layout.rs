//! How a distributed table looks on the coordinator (pure DDL generation).
//!
//! ```text
//! orders                      PARTITION BY HASH (customer_id), MODULUS = shard count
//!  └─ orders_102009_shard     PARTITION BY HASH (customer_id), one partition: MODULUS 1
//!      └─ orders_102009       FOREIGN TABLE on the node holding shard 102009
//! ```
//!
//! The middle level is what makes a narrow cutover possible: PostgreSQL refuses `LOCK TABLE` on
//! foreign tables and detaching a partition needs an exclusive lock on its parent. With one
//! partitioned table per shard, a shard move locks only that shard's partitioned table (writes
//! to every other shard go on), detaches the old foreign table and attaches one pointing at the
//! new node, all without touching the distributed table's own lock. A distributed schema's table
//! has the same shape with the table itself as the middle level.

use shoal_ddl::definition::TableDef;
use shoal_sql::{derived_name, quote_ident, quote_literal, QualifiedName};

/// The coordinator's partitioned table of one shard (the middle level).
pub fn shard_partition(shard_table: &QualifiedName) -> QualifiedName {
    QualifiedName::new(
        &shard_table.schema,
        derived_name(&shard_table.name, "shard"),
    )
}

/// DDL for shard `remainder` of a hash-distributed table: its partitioned table under `parent`
/// and the foreign table that points at `shard_table` through `fdw_server`.
pub fn hash_shard_ddl(
    parent: &QualifiedName,
    column: &str,
    modulus: i32,
    remainder: i32,
    shard_table: &QualifiedName,
    fdw_server: &str,
) -> Vec<String> {
    let partition = shard_partition(shard_table);
    vec![
        format!(
            "CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {modulus}, REMAINDER {remainder}) \
             PARTITION BY HASH ({})",
            partition.quoted(),
            parent.quoted(),
            quote_ident(column)
        ),
        placement_ddl(&partition, shard_table, fdw_server),
    ]
}

/// The foreign table through which the coordinator reaches a placement: the only partition of
/// `partition`, named like the shard table it points at.
pub fn placement_ddl(
    partition: &QualifiedName,
    shard_table: &QualifiedName,
    fdw_server: &str,
) -> String {
    format!(
        "CREATE FOREIGN TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS 1, REMAINDER 0) \
         SERVER {} OPTIONS (schema_name {}, table_name {})",
        shard_table.quoted(),
        partition.quoted(),
        quote_ident(fdw_server),
        quote_literal(&shard_table.schema),
        quote_literal(&shard_table.name)
    )
}

/// The plain indexes of a table, on its coordinator relation: partitioned indexes that hold no
/// entries (the foreign partitions are skipped), there so that `DROP INDEX`, `ALTER INDEX` and
/// tools reading the catalogs find them under their own names. Unique ones cannot exist over
/// foreign partitions; they live on the shards only.
pub fn coordinator_index_ddl(def: &TableDef, table: &QualifiedName) -> Vec<String> {
    def.indexes
        .iter()
        .filter(|index| !index.unique)
        .map(|index| {
            format!(
                "CREATE INDEX {} ON {} USING {}",
                quote_ident(&index.name),
                table.quoted(),
                index.method_and_keys
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_ddl::definition::IndexDef;

    #[test]
    fn only_plain_indexes_go_to_the_coordinator() {
        let index = |name: &str, unique| IndexDef {
            name: name.into(),
            unique,
            key_columns: vec!["k".into()],
            method_and_keys: "btree (k)".into(),
        };
        let def = TableDef {
            relid: 1,
            name: QualifiedName::new("public", "t"),
            relkind: "r".into(),
            columns: Vec::new(),
            constraints: Vec::new(),
            indexes: vec![index("by k", false), index("one k", true)],
            replica_identity: shoal_ddl::definition::ReplicaIdentity::Default,
        };
        assert_eq!(
            coordinator_index_ddl(&def, &QualifiedName::new("my s", "T")),
            vec![r#"CREATE INDEX "by k" ON "my s"."T" USING btree (k)"#.to_string()]
        );
    }

    #[test]
    fn a_hash_shard_is_a_partitioned_table_with_one_foreign_partition() {
        let ddl = hash_shard_ddl(
            &QualifiedName::new("public", "Orders"),
            "customer id",
            32,
            5,
            &QualifiedName::new("public", "Orders_102009"),
            "shoal_node_2",
        );
        assert_eq!(
            ddl[0],
            r#"CREATE TABLE "public"."Orders_102009_shard" PARTITION OF "public"."Orders" FOR VALUES WITH (MODULUS 32, REMAINDER 5) PARTITION BY HASH ("customer id")"#
        );
        assert_eq!(
            ddl[1],
            r#"CREATE FOREIGN TABLE "public"."Orders_102009" PARTITION OF "public"."Orders_102009_shard" FOR VALUES WITH (MODULUS 1, REMAINDER 0) SERVER "shoal_node_2" OPTIONS (schema_name 'public', table_name 'Orders_102009')"#
        );
    }
}
