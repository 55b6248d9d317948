use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::*;
use crate::topology::{Distribution, Shard};

fn name(schema: &str, table: &str) -> QualifiedName {
    QualifiedName::new(schema, table)
}

fn distributed(
    schema: &str,
    table: &str,
    columns: &[&str],
    key: (&str, KeyType),
    colocation: i64,
    first_shard: i64,
) -> (QualifiedName, Table) {
    let count = if schema == "tenant" { 1 } else { 4 };
    let shards = (0..count)
        .map(|i| Shard {
            node: 1 + (i % 2) as i32,
            table: name(schema, &format!("{table}_{}", first_shard + i)),
            shard_id: first_shard + i,
        })
        .collect();
    (
        name(schema, table),
        Table {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            with_defaults: Vec::new(),
            placement: Placement::Distributed(Distribution {
                key: (count > 1).then(|| (key.0.to_string(), key.1)),
                colocation,
                shards,
            }),
        },
    )
}

/// orders and items colocated by customer_id (bigint), users by id (uuid) apart, kinds a
/// reference table, audit on the coordinator only, and a table with awkward names.
fn topology() -> Topology {
    let mut tables: HashMap<QualifiedName, Table> = [
        distributed(
            "public",
            "orders",
            &["customer_id", "id", "amount", "status"],
            ("customer_id", KeyType::Int8),
            1,
            100,
        ),
        distributed(
            "public",
            "items",
            &["customer_id", "order_id", "kind", "qty"],
            ("customer_id", KeyType::Int8),
            1,
            200,
        ),
        distributed(
            "public",
            "users",
            &["id", "name"],
            ("id", KeyType::Uuid),
            2,
            300,
        ),
        distributed(
            "tenant",
            "users",
            &["id", "name"],
            ("id", KeyType::Int4),
            4,
            500,
        ),
        distributed(
            "tenant",
            "posts",
            &["id", "user_id"],
            ("id", KeyType::Int4),
            4,
            501,
        ),
        distributed(
            "my shop",
            "Order \"Items\"",
            &["Id", "note"],
            ("Id", KeyType::Text),
            3,
            400,
        ),
    ]
    .into_iter()
    .collect();
    tables
        .get_mut(&name("public", "orders"))
        .unwrap()
        .with_defaults = vec!["status".into()];
    tables.insert(
        name("public", "kinds"),
        Table {
            columns: vec!["id".into(), "name".into()],
            with_defaults: Vec::new(),
            placement: Placement::Reference {
                replica: name("public", "kinds"),
            },
        },
    );
    tables.insert(
        name("public", "audit"),
        Table {
            columns: vec!["at".into()],
            with_defaults: Vec::new(),
            placement: Placement::Local,
        },
    );
    Topology {
        search_path: vec!["public".into()],
        tables: Arc::new(tables),
        builtin_functions: Arc::new(
            ["count", "sum", "lower", "now", "coalesce", "nextval"]
                .into_iter()
                .map(String::from)
                .collect::<HashSet<_>>(),
        ),
        node_versions: Arc::new(HashMap::from([(1, 10), (2, 20), (7, 70), (8, 80)])),
    }
}

fn routed(sql: &str, params: &[Param<'_>]) -> Target {
    let topology = topology();
    let plan = plan(sql, &topology).unwrap_or_else(|e| panic!("{sql}: {e}"));
    plan.bind(params, &topology)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn planned_not(sql: &str, because: &str) {
    match plan(sql, &topology()) {
        Ok(plan) => panic!("{sql} was planned: {plan:?}"),
        Err(NotRoutable(reason)) => assert!(reason.contains(because), "{sql}: {reason}"),
    }
}

fn bound_not(sql: &str, params: &[Param<'_>], because: &str) {
    let topology = topology();
    let plan = plan(sql, &topology).unwrap_or_else(|e| panic!("{sql}: {e}"));
    match plan.bind(params, &topology) {
        Ok(target) => panic!("{sql} was routed: {target:?}"),
        Err(NotRoutable(reason)) => assert!(reason.contains(because), "{sql}: {reason}"),
    }
}

fn index_of(key: KeyValue) -> u32 {
    shard_index(&key, 4)
}

#[test]
fn a_key_lookup_goes_to_its_shard_renamed() {
    let index = index_of(KeyValue::Int8(42));
    let target = routed("SELECT id, amount FROM orders WHERE customer_id = 42", &[]);
    assert_eq!(target.shard_index, index);
    assert_eq!(target.place, Place::Node(1 + (index % 2) as i32));
    assert_eq!(
        target.sql,
        format!(
            "SELECT id, amount FROM public.orders_{} orders WHERE customer_id = 42",
            100 + index
        )
    );
    // The constant may be on either side, quoted, or cast.
    for sql in [
        "SELECT * FROM orders WHERE 42 = customer_id",
        "SELECT * FROM orders WHERE customer_id = '42'",
        "SELECT * FROM orders WHERE orders.customer_id = 42::int4 AND amount > 5",
    ] {
        assert_eq!(routed(sql, &[]).shard_index, index, "{sql}");
    }
}

#[test]
fn parameters_pick_the_shard_at_bind() {
    let sql = "SELECT * FROM orders o WHERE o.customer_id = $1 AND o.id = $2";
    let index = index_of(KeyValue::Int8(7));
    assert_eq!(
        routed(sql, &[Param::Text("7"), Param::Text("1")]).shard_index,
        index
    );
    // An int4 parameter hashes as the same bigint.
    let binary = Param::Binary {
        ty: Some(KeyType::Int4),
        bytes: &7i32.to_be_bytes(),
    };
    assert_eq!(routed(sql, &[binary, Param::Null]).shard_index, index);
    let other_type = Param::Binary {
        ty: Some(KeyType::Text),
        bytes: b"7",
    };
    bound_not(sql, &[other_type, Param::Null], "another type");
    bound_not(sql, &[], "missing");
    bound_not(
        sql,
        &[Param::Text("0x7"), Param::Null],
        "not a bigint value",
    );
}

#[test]
fn in_lists_route_when_every_value_is_in_one_shard() {
    let (a, b) = (1..1000)
        .flat_map(|a| (a + 1..1000).map(move |b| (a, b)))
        .find(|&(a, b)| index_of(KeyValue::Int8(a)) == index_of(KeyValue::Int8(b)))
        .unwrap();
    let c = (1..1000)
        .find(|&c| index_of(KeyValue::Int8(c)) != index_of(KeyValue::Int8(a)))
        .unwrap();
    routed(
        &format!("SELECT * FROM orders WHERE customer_id IN ({a}, {b})"),
        &[],
    );
    bound_not(
        &format!("SELECT * FROM orders WHERE customer_id IN ({a}, {c})"),
        &[],
        "different shards",
    );
}

#[test]
fn colocated_joins_follow_a_pinned_key() {
    let index = index_of(KeyValue::Int8(9));
    let target = routed(
        "SELECT o.id, sum(i.qty) FROM orders o JOIN items i ON i.customer_id = o.customer_id \
         WHERE o.customer_id = 9 GROUP BY o.id",
        &[],
    );
    assert_eq!(
        target.sql,
        format!(
            "SELECT o.id, sum(i.qty) FROM public.orders_{} o JOIN public.items_{} i ON \
             i.customer_id = o.customer_id WHERE o.customer_id = 9 GROUP BY o.id",
            100 + index,
            200 + index
        )
    );
    routed(
        "SELECT * FROM orders JOIN items USING (customer_id) WHERE customer_id = $1",
        &[Param::Text("9")],
    );
    routed(
        "SELECT * FROM orders o LEFT JOIN items i ON i.customer_id = o.customer_id WHERE o.customer_id = 9",
        &[],
    );
    // The nullable side's pin in the ON clause restricts nothing of the preserved side.
    planned_not(
        "SELECT * FROM orders o LEFT JOIN items i ON i.customer_id = o.customer_id AND i.customer_id = 9",
        "o is not pinned",
    );
    planned_not(
        "SELECT * FROM orders o JOIN items i ON i.order_id = o.id WHERE o.customer_id = 9",
        "i is not pinned",
    );
    planned_not(
        "SELECT * FROM orders o JOIN users u ON true WHERE o.customer_id = 9 AND u.id = $1",
        "different colocation groups",
    );
}

#[test]
fn reference_tables_are_read_on_the_node() {
    let target = routed(
        "SELECT i.qty, k.name FROM items i JOIN kinds k ON k.id = i.kind WHERE i.customer_id = 3",
        &[],
    );
    assert!(target.sql.contains("JOIN public.kinds k"), "{}", target.sql);
    planned_not(
        "SELECT * FROM items i JOIN kinds k ON k.id = i.kind WHERE i.customer_id = 3 FOR UPDATE",
        "locks rows of a reference table",
    );
    planned_not("SELECT * FROM kinds WHERE id = 1", "no distributed table");
}

#[test]
fn reference_writes_run_on_the_coordinator_where_they_are_authoritative() {
    let target = routed(
        "UPDATE kinds SET name = $1 WHERE id = 1",
        &[Param::Text("x")],
    );
    assert_eq!(target.place, Place::Coordinator);
    assert_eq!(
        target.sql,
        "UPDATE public.kinds kinds SET name = $1 WHERE id = 1"
    );
    let target = routed("SELECT name FROM kinds WHERE id = 1 FOR UPDATE", &[]);
    assert_eq!(target.place, Place::Coordinator);
    planned_not(
        "UPDATE kinds k SET name = 'x' FROM orders o WHERE o.customer_id = 1 AND k.id = o.id",
        "writes a reference table",
    );
    let plan = plan("DELETE FROM kinds WHERE id = 2", &topology()).unwrap();
    assert!(plan.writes_reference());
    assert_eq!(
        plan.accesses(),
        &[
            (name("public", "kinds"), Privilege::Select),
            (name("public", "kinds"), Privilege::Delete)
        ]
    );
}

#[test]
fn an_insert_that_leaves_columns_out_names_its_shard() {
    let full = routed(
        "INSERT INTO items (customer_id, order_id, kind, qty) VALUES (3, 1, 2, 5)",
        &[],
    );
    let partial = routed(
        "INSERT INTO items (customer_id, order_id) VALUES (3, 1)",
        &[],
    );
    assert_eq!(full.guard, None, "{}", full.sql);
    let index = index_of(KeyValue::Int8(3));
    let Place::Node(node) = partial.place else {
        panic!("on a node")
    };
    assert_eq!(
        partial.guard,
        Some(Guard {
            shard: name("public", &format!("items_{}", 200 + index)),
            version: i64::from(node) * 10,
        })
    );
    assert_eq!(
        routed("SELECT * FROM orders WHERE customer_id = 3", &[]).guard,
        None
    );
}

#[test]
fn a_plan_names_the_privileges_it_needs() {
    let plan = plan(
        "UPDATE items i SET qty = 1 FROM kinds k WHERE k.id = i.kind AND i.customer_id = 3",
        &topology(),
    )
    .unwrap();
    assert!(plan.reads_reference_replica());
    assert_eq!(
        plan.accesses(),
        &[
            (name("public", "items"), Privilege::Select),
            (name("public", "kinds"), Privilege::Select),
            (name("public", "items"), Privilege::Update)
        ]
    );
}

#[test]
fn what_a_shard_cannot_answer_alone_goes_to_the_coordinator() {
    for (sql, because) in [
        ("SELECT * FROM orders", "orders is not pinned"),
        ("SELECT * FROM orders WHERE customer_id = 1 OR customer_id = 2", "not pinned"),
        ("SELECT * FROM orders WHERE customer_id + 0 = 1", "not pinned"),
        (
            "SELECT * FROM orders WHERE customer_id = 1 AND id IN (SELECT order_id FROM items)",
            "SubLink",
        ),
        (
            "WITH x AS (SELECT 1) SELECT * FROM orders WHERE customer_id = 1",
            "WITH clause",
        ),
        (
            "SELECT id FROM orders WHERE customer_id = 1 UNION SELECT id FROM orders WHERE customer_id = 1",
            "combines queries",
        ),
        ("SELECT * FROM orders, generate_series(1, 2) WHERE customer_id = 1", "RangeFunction"),
        ("SELECT my_func(id) FROM orders WHERE customer_id = 1", "my_func()"),
        ("SELECT nextval('s') FROM orders WHERE customer_id = 1", "nextval()"),
        ("SELECT * FROM audit", "on the coordinator only"),
        ("SELECT * FROM order_view WHERE customer_id = 1", "not a table Shoal knows"),
        ("SELECT * FROM orders WHERE customer_id = 1; SELECT 1", "not one statement"),
        ("CREATE TABLE t (a int)", "only SELECT"),
        ("SELECT * INTO copy FROM orders WHERE customer_id = 1", "SELECT INTO"),
        ("UPDATE orders SET customer_id = 2 WHERE customer_id = 1", "assigns the distribution column"),
    ] {
        planned_not(sql, because);
    }
    // 1.5 is not a bigint the way PostgreSQL compares them: the coordinator decides.
    bound_not(
        "SELECT * FROM orders WHERE customer_id = 1.5",
        &[],
        "bigint",
    );
}

#[test]
fn inserts_go_to_the_shard_of_their_rows() {
    let index = index_of(KeyValue::Int8(5));
    let target = routed(
        "INSERT INTO orders (customer_id, id, amount, status) VALUES ($1, 1, 9.5, 'new') \
         ON CONFLICT (customer_id, id) DO UPDATE SET amount = excluded.amount RETURNING id",
        &[Param::Text("5")],
    );
    assert_eq!(target.shard_index, index);
    assert_eq!(
        target.sql,
        format!(
            "INSERT INTO public.orders_{} AS orders (customer_id, id, amount, status) VALUES ($1, 1, 9.5, 'new') \
             ON CONFLICT (customer_id, id) DO UPDATE SET amount = excluded.amount RETURNING id",
            100 + index
        )
    );
    // A constraint named in ON CONFLICT is the shard's copy there, whose name carries the
    // shard id; a reference table's is its own (on the coordinator).
    let target = routed(
        "INSERT INTO orders VALUES (5, 1, 9.5, 'new') ON CONFLICT ON CONSTRAINT \"Orders pkey\" \
         DO NOTHING",
        &[],
    );
    assert!(
        target.sql.ends_with(&format!(
            "ON CONFLICT ON CONSTRAINT \"Orders pkey_{}\" DO NOTHING",
            100 + index
        )),
        "{}",
        target.sql
    );
    let target = routed(
        "INSERT INTO kinds VALUES (1, 'a') ON CONFLICT ON CONSTRAINT kinds_pkey DO NOTHING",
        &[],
    );
    assert!(
        target.sql.ends_with("ON CONSTRAINT kinds_pkey DO NOTHING"),
        "{}",
        target.sql
    );
    // Without a column list the table's order applies.
    routed("INSERT INTO items VALUES (5, 1, 2, 3)", &[]);
    planned_not(
        "INSERT INTO orders (customer_id, id) VALUES (5, 1)",
        "column status takes the coordinator's default",
    );
    planned_not(
        "INSERT INTO items (order_id) VALUES (1)",
        "no value for the distribution column",
    );
    planned_not("INSERT INTO items SELECT * FROM items", "result of a query");
    planned_not("INSERT INTO items DEFAULT VALUES", "DEFAULT VALUES");
    planned_not(
        "INSERT INTO items VALUES (5, 1, DEFAULT, 3)",
        "SetToDefault",
    );
    planned_not(
        "INSERT INTO items VALUES (5, 1, 2, 3) ON CONFLICT (customer_id, order_id) DO UPDATE SET customer_id = 6",
        "assigns the distribution column",
    );
    let other = (1..1000)
        .find(|&c| index_of(KeyValue::Int8(c)) != index)
        .unwrap();
    bound_not(
        &format!("INSERT INTO items VALUES (5, 1, 2, 3), ({other}, 1, 2, 3)"),
        &[],
        "different shards",
    );
}

#[test]
fn updates_and_deletes_of_one_key() {
    let index = index_of(KeyValue::Int8(11));
    let target = routed(
        "UPDATE orders SET amount = amount + 1 WHERE customer_id = 11 AND id = 2",
        &[],
    );
    assert_eq!(
        target.sql,
        format!(
            "UPDATE public.orders_{} orders SET amount = amount + 1 WHERE customer_id = 11 AND id = 2",
            100 + index
        )
    );
    let target = routed(
        "DELETE FROM items i USING orders o WHERE i.customer_id = o.customer_id AND o.customer_id = $1",
        &[Param::Text("11")],
    );
    assert_eq!(target.shard_index, index);
    planned_not("DELETE FROM orders WHERE id = 3", "orders is not pinned");
}

#[test]
fn names_that_need_quoting_stay_quoted() {
    let index = index_of(KeyValue::Text(b"abc".to_vec()));
    let target = routed(
        r#"SELECT note FROM "my shop"."Order ""Items""" WHERE "Id" = 'abc'"#,
        &[],
    );
    assert_eq!(
        target.sql,
        format!(
            r#"SELECT note FROM "my shop"."Order ""Items""_{}" "Order ""Items""" WHERE "Id" = 'abc'"#,
            400 + index
        )
    );
}

#[test]
fn a_null_key_matches_nothing_and_lands_on_shard_zero() {
    assert_eq!(
        routed("SELECT * FROM orders WHERE customer_id = NULL", &[]).shard_index,
        0
    );
}

#[test]
fn a_moved_shard_group_needs_no_new_plan_but_a_changed_table_does() {
    let mut topology = topology();
    let sql = "SELECT * FROM orders o JOIN items i USING (customer_id) WHERE customer_id = 4";
    let plan = plan(sql, &topology).unwrap();
    let index = index_of(KeyValue::Int8(4)) as usize;
    for table in ["orders", "items"] {
        if let Placement::Distributed(d) = &mut Arc::make_mut(&mut topology.tables)
            .get_mut(&name("public", table))
            .unwrap()
            .placement
        {
            d.shards[index].node = 7;
        }
    }
    assert_eq!(plan.bind(&[], &topology).unwrap().place, Place::Node(7));
    // Half moved (the catalog read between the two rows' updates) is refused, not guessed.
    if let Placement::Distributed(d) = &mut Arc::make_mut(&mut topology.tables)
        .get_mut(&name("public", "items"))
        .unwrap()
        .placement
    {
        d.shards[index].node = 8;
    }
    assert!(plan.bind(&[], &topology).is_err());
    Arc::make_mut(&mut topology.tables).remove(&name("public", "items"));
    assert!(plan.bind(&[], &topology).is_err());
}

#[test]
fn a_distributed_schema_needs_no_key() {
    let target = routed(
        "SELECT u.name, count(*) FROM tenant.users u JOIN tenant.posts p ON p.user_id = u.id GROUP BY u.name",
        &[],
    );
    assert_eq!(target.shard_index, 0);
    assert!(target.sql.contains("tenant.users_500 u"), "{}", target.sql);
    routed("INSERT INTO tenant.users VALUES (1, 'a')", &[]);
    routed("UPDATE tenant.users SET id = id + 1", &[]);
    planned_not(
        "SELECT * FROM tenant.users u JOIN orders o ON o.id = u.id WHERE o.customer_id = 1",
        "different colocation groups",
    );
}
