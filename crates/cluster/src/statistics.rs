//! Planner statistics of the coordinator's relations of distributed tables, kept true without
//! reading every shard through the coordinator.
//!
//! PostgreSQL never analyzes a foreign table by itself (autovacuum skips them, and so does a
//! database-wide `ANALYZE`), a move's cutover replaces the shard's foreign table with a new one
//! that has none, and an explicit `ANALYZE` of a distributed table reads through postgres_fdw
//! every shard once per level of the layout (leaf, the shard's partitioned table, the table).
//! So Shoal refreshes them itself, shard by shard, where they went stale:
//!
//! 1. each node analyzes its own shard tables (local, cheap, all nodes at once) where they were
//!    never analyzed or changed by more than [`SCALE_FACTOR`] since (autovacuum's rule);
//! 2. the coordinator's foreign table and the shard's partitioned table get the shard's
//!    statistics by the fastest way the coordinator's version has ([`Method`]);
//! 3. the distributed table's own (inherited) statistics, which the planner uses for joins and
//!    groupings over the whole table, are refreshed when the table as a whole changed by more
//!    than the same fraction.
//!
//! This module is the pure half: which relations need what, from what the nodes and the
//! coordinator report. `refresh` carries it out.

use serde::Serialize;

pub mod refresh;
mod restore;

pub use refresh::{refresh, refresh_or_warnings, Scope, StatisticsReport, TableReport};

/// A relation's statistics are stale once more than this fraction of its rows changed (or its
/// row count moved by more), as autovacuum's `autovacuum_analyze_scale_factor`.
pub const SCALE_FACTOR: f64 = 0.1;

/// Changes below this many rows never make statistics stale (`autovacuum_analyze_threshold`).
pub const BASE_THRESHOLD: f64 = 50.0;

/// How the coordinator's statistics of a shard are made, by the coordinator's major version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// PostgreSQL 18+: the node's own statistics of the shard are copied onto the foreign table
    /// and the shard's partitioned table (`pg_restore_relation_stats`,
    /// `pg_restore_attribute_stats`; the owner may, no superuser needed): no row crosses. The
    /// table's own statistics come from `ANALYZE ONLY` over remote samples.
    Restore,
    /// PostgreSQL 16 and 17: `ANALYZE` on the coordinator, where postgres_fdw samples each shard
    /// on its node (`analyze_sampling`, `auto` by default) once the node has analyzed it, so
    /// only the sample crosses.
    SampledAnalyze,
    /// PostgreSQL 15: `ANALYZE` on the coordinator, which reads every row of each shard it
    /// analyzes (postgres_fdw 15 cannot sample remotely); only stale shards are read.
    Analyze,
}

impl Method {
    /// The method for a coordinator whose `server_version_num` is `version`.
    pub fn for_version(version: i32) -> Method {
        if version >= 180000 {
            Method::Restore
        } else if version >= 160000 {
            Method::SampledAnalyze
        } else {
            Method::Analyze
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Method::Restore => "copied from the nodes' own statistics (no rows read)",
            Method::SampledAnalyze => "ANALYZE on the coordinator over samples taken on the nodes",
            Method::Analyze => "ANALYZE on the coordinator, reading the stale shards' rows",
        }
    }
}

/// Rows of change past which statistics of a relation of `rows` rows are stale.
pub fn threshold(rows: f64) -> f64 {
    BASE_THRESHOLD + SCALE_FACTOR * rows.max(0.0)
}

/// What a node reports about one shard table (`pg_class`, `pg_stat_user_tables`).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeShard {
    /// `reltuples`: -1 until the node analyzed (or vacuumed) it.
    pub reltuples: f64,
    pub relpages: i32,
    /// `n_live_tup`, `n_mod_since_analyze` (the node's counters, a little behind its writes).
    pub live_rows: i64,
    pub modified_since_analyze: i64,
    /// Analyzed by an `ANALYZE` or autovacuum at least once.
    pub analyzed: bool,
}

/// What the coordinator has for one relation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoordinatorRelation {
    /// -1 when never set.
    pub reltuples: f64,
    pub relpages: i32,
    /// It has column statistics (`pg_statistic`; inherited ones for partitioned tables).
    pub has_columns: bool,
}

impl CoordinatorRelation {
    pub const NONE: CoordinatorRelation = CoordinatorRelation {
        reltuples: -1.0,
        relpages: 0,
        has_columns: false,
    };

    fn missing(&self) -> bool {
        self.reltuples < 0.0 || !self.has_columns
    }
}

/// Why a shard is analyzed on its node before the coordinator's statistics are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAnalysis {
    /// The node's statistics are current.
    None,
    /// The node never analyzed it (a new shard, a move's target), or the refresh is forced.
    Missing,
    /// This many rows changed since its last analysis, beyond the threshold: the coordinator,
    /// refreshed from that analysis at best, is stale too.
    Changed(i64),
}

/// Decides from a node's report whether it analyzes the shard first (step 1).
pub fn node_analysis(node: &NodeShard, force: bool) -> NodeAnalysis {
    if !node.analyzed || node.reltuples < 0.0 {
        NodeAnalysis::Missing
    } else if node.modified_since_analyze as f64 > threshold(node.reltuples) {
        NodeAnalysis::Changed(node.modified_since_analyze)
    } else if force {
        NodeAnalysis::Missing
    } else {
        NodeAnalysis::None
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShardObservation {
    pub shard_id: i64,
    /// What its node reports after step 1; None: its node could not be read (the shard is left
    /// as it is).
    pub node: Option<NodeShard>,
    /// What step 1 did.
    pub analysis: NodeAnalysis,
    /// The foreign table.
    pub leaf: CoordinatorRelation,
    /// The shard's partitioned table (for a distributed schema's table: the table itself).
    pub middle: CoordinatorRelation,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableObservation {
    /// Hash tables have a level above the shards (the table); a distributed schema's table is
    /// its one shard's partitioned table.
    pub has_parent_level: bool,
    pub parent: CoordinatorRelation,
    pub shards: Vec<ShardObservation>,
}

/// What to do for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ShardAction {
    pub shard_id: i64,
    /// New statistics for the coordinator's foreign table.
    pub leaf: bool,
    /// New statistics for the shard's partitioned table.
    pub middle: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TablePlan {
    /// Only shards with something to do.
    pub shards: Vec<ShardAction>,
    /// The table's own (inherited) statistics.
    pub parent: bool,
    /// Before PostgreSQL 18 the table's own statistics come only from an `ANALYZE` of the whole
    /// table, which redoes every level: then that one statement replaces the shards' refreshes.
    pub whole_table: bool,
    /// Shards whose node could not be read.
    pub unreachable: Vec<i64>,
}

impl TablePlan {
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty() && !self.parent && !self.whole_table
    }
}

/// Plans one table's coordinator statistics (step 2) from what the nodes report after step 1.
/// `force`: everything, whatever the counters say.
pub fn plan_table(observation: &TableObservation, method: Method, force: bool) -> TablePlan {
    let mut plan = TablePlan::default();
    let mut rows_now = 0.0;
    let mut rows_changed = 0.0;
    for shard in &observation.shards {
        let Some(node) = &shard.node else {
            plan.unreachable.push(shard.shard_id);
            rows_now += shard.leaf.reltuples.max(0.0);
            continue;
        };
        // An empty shard the node never analyzed keeps -1; its live count says how big it is.
        let rows = if node.reltuples >= 0.0 {
            node.reltuples
        } else {
            node.live_rows.max(0) as f64
        };
        let drifted = |relation: &CoordinatorRelation| {
            relation.missing()
                || (rows - relation.reltuples).abs() > threshold(relation.reltuples)
                // A copy is exact: different numbers mean the node analyzed since.
                || (method == Method::Restore && relation.reltuples != node.reltuples)
        };
        let changed = force || matches!(shard.analysis, NodeAnalysis::Changed(_));
        let action = ShardAction {
            shard_id: shard.shard_id,
            leaf: changed || drifted(&shard.leaf),
            middle: changed || drifted(&shard.middle),
        };
        // The shard's data changed when its partitioned table's statistics did (a new foreign
        // table alone is a move).
        if action.middle {
            let moved = (rows - shard.middle.reltuples.max(0.0)).abs();
            rows_changed += match shard.analysis {
                NodeAnalysis::Changed(rows) => moved.max(rows as f64),
                _ => moved,
            };
        }
        rows_now += rows;
        if action.leaf || action.middle {
            plan.shards.push(action);
        }
    }
    if observation.has_parent_level && plan.unreachable.is_empty() {
        let parent = &observation.parent;
        plan.parent = force
            || parent.missing()
            || rows_changed > threshold(parent.reltuples)
            || (rows_now - parent.reltuples).abs() > threshold(parent.reltuples);
    }
    if plan.parent && method != Method::Restore {
        plan.whole_table = true;
        plan.parent = false;
        plan.shards.clear();
    }
    plan
}

/// Options of every session that reads statistics as text on a node or writes them on the
/// coordinator: values are written out and read back in one fixed format, whatever the
/// servers' defaults.
pub const TEXT_FORMAT_SETTINGS: &str =
    "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// The statistics of a node's shard tables, by schema and name (`$1`, `$2`), one row per
/// column; every value as text so that the coordinator reads it with the column's own type.
/// The range columns of `pg_stats` exist from PostgreSQL 17.
pub fn node_column_stats_sql(node_version: i32) -> String {
    let ranges = if node_version >= 170000 {
        "s.range_length_histogram::text, s.range_empty_frac, s.range_bounds_histogram::text"
    } else {
        "NULL::text, NULL::real, NULL::text"
    };
    format!(
        "SELECT s.schemaname::text, s.tablename::text, s.attname::text, s.null_frac,
                s.avg_width, s.n_distinct, s.most_common_vals::text, s.most_common_freqs::text,
                s.histogram_bounds::text, s.correlation, s.most_common_elems::text,
                s.most_common_elem_freqs::text, s.elem_count_histogram::text, {ranges}
         FROM pg_catalog.pg_stats s
         JOIN unnest($1::text[], $2::text[]) AS t(schema_name, table_name)
           ON s.schemaname = t.schema_name AND s.tablename = t.table_name
         WHERE NOT s.inherited"
    )
}

/// Clears the column statistics of a relation (`$1` schema, `$2` name, `$3` inherited): a
/// restore keeps whatever it is not given, and the node may have dropped a kind since.
pub const CLEAR_COLUMNS_SQL: &str = "SELECT pg_catalog.pg_clear_attribute_stats($1, $2, a.attname, $3)
     FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2))
       AND a.attnum > 0 AND NOT a.attisdropped";

/// Restores a relation's column statistics (`$1` schema, `$2` name, `$3` inherited, `$4` the
/// node's version) from arrays with one element per column (`$5` names, then the `pg_stats`
/// values in [`node_column_stats_sql`]'s order); NULL elements are skipped by PostgreSQL. The
/// array-valued statistics travel as text and are cast here. Returns how many were accepted.
pub const RESTORE_COLUMNS_SQL: &str = "SELECT count(*) FILTER (WHERE pg_catalog.pg_restore_attribute_stats(
        'schemaname', $1::text, 'relname', $2::text, 'attname', c.attname, 'inherited', $3::boolean,
        'version', $4::integer,
        'null_frac', c.null_frac, 'avg_width', c.avg_width, 'n_distinct', c.n_distinct,
        'most_common_vals', c.mcv, 'most_common_freqs', c.mcf::real[],
        'histogram_bounds', c.hist, 'correlation', c.corr,
        'most_common_elems', c.mce, 'most_common_elem_freqs', c.mcef::real[],
        'elem_count_histogram', c.ech::real[],
        'range_length_histogram', c.rlh, 'range_empty_frac', c.ref, 'range_bounds_histogram', c.rbh))
     FROM unnest($5::text[], $6::real[], $7::integer[], $8::real[], $9::text[], $10::text[],
                 $11::text[], $12::real[], $13::text[], $14::text[], $15::text[], $16::text[],
                 $17::real[], $18::text[])
          AS c(attname, null_frac, avg_width, n_distinct, mcv, mcf, hist, corr, mce, mcef, ech,
               rlh, ref, rbh)";

/// Restores a relation's row count and size (`$1` schema, `$2` name, `$3` pages, `$4` rows).
pub const RESTORE_RELATION_SQL: &str = "SELECT pg_catalog.pg_restore_relation_stats(
        'schemaname', $1::text, 'relname', $2::text, 'relpages', $3::integer,
        'reltuples', $4::real)";

#[cfg(test)]
mod tests {
    use super::*;

    fn node(reltuples: f64, live: i64, modified: i64) -> NodeShard {
        NodeShard {
            reltuples,
            relpages: (reltuples.max(0.0) / 100.0) as i32,
            live_rows: live,
            modified_since_analyze: modified,
            analyzed: reltuples >= 0.0,
        }
    }

    fn coordinator(reltuples: f64) -> CoordinatorRelation {
        CoordinatorRelation {
            reltuples,
            relpages: (reltuples.max(0.0) / 100.0) as i32,
            has_columns: reltuples >= 0.0,
        }
    }

    /// A shard as step 2 sees it: `after` is what its node reports once step 1 ran.
    fn shard(
        shard_id: i64,
        analysis: NodeAnalysis,
        after: NodeShard,
        leaf: f64,
        middle: f64,
    ) -> ShardObservation {
        ShardObservation {
            shard_id,
            node: Some(after),
            analysis,
            leaf: coordinator(leaf),
            middle: coordinator(middle),
        }
    }

    fn table(parent: f64, shards: Vec<ShardObservation>) -> TableObservation {
        TableObservation {
            has_parent_level: true,
            parent: coordinator(parent),
            shards,
        }
    }

    fn in_sync(shard_id: i64, rows: f64) -> ShardObservation {
        shard(
            shard_id,
            NodeAnalysis::None,
            node(rows, rows as i64, 0),
            rows,
            rows,
        )
    }

    fn both(shard_id: i64) -> ShardAction {
        ShardAction {
            shard_id,
            leaf: true,
            middle: true,
        }
    }

    #[test]
    fn versions_get_their_method() {
        assert_eq!(Method::for_version(150020), Method::Analyze);
        assert_eq!(Method::for_version(160004), Method::SampledAnalyze);
        assert_eq!(Method::for_version(170010), Method::SampledAnalyze);
        assert_eq!(Method::for_version(180006), Method::Restore);
    }

    #[test]
    fn nodes_analyze_new_and_changed_shards() {
        // Never analyzed: a new shard, or a move's target.
        assert_eq!(
            node_analysis(&node(-1.0, 0, 0), false),
            NodeAnalysis::Missing
        );
        // 10% of 10,000 plus 50 is the threshold, as autovacuum's.
        assert_eq!(
            node_analysis(&node(10000.0, 11000, 1050), false),
            NodeAnalysis::None
        );
        assert_eq!(
            node_analysis(&node(10000.0, 11000, 1051), false),
            NodeAnalysis::Changed(1051)
        );
        assert_eq!(
            node_analysis(&node(10000.0, 10000, 0), true),
            NodeAnalysis::Missing
        );
    }

    #[test]
    fn a_freshly_distributed_table_gets_everything() {
        let fresh = |id| {
            shard(
                id,
                NodeAnalysis::Missing,
                node(10000.0, 0, 10000),
                -1.0,
                -1.0,
            )
        };
        let observation = table(-1.0, vec![fresh(1), fresh(2)]);
        let plan = plan_table(&observation, Method::Restore, false);
        assert_eq!(plan.shards, vec![both(1), both(2)]);
        assert!(plan.parent && !plan.whole_table);
        // Before 18 one ANALYZE of the table does every level.
        for method in [Method::SampledAnalyze, Method::Analyze] {
            let plan = plan_table(&observation, method, false);
            assert!(plan.whole_table && !plan.parent && plan.shards.is_empty());
        }
    }

    #[test]
    fn statistics_in_step_need_nothing() {
        let observation = table(20000.0, vec![in_sync(1, 10000.0), in_sync(2, 10000.0)]);
        for method in [Method::Restore, Method::SampledAnalyze, Method::Analyze] {
            assert!(plan_table(&observation, method, false).is_empty());
        }
        let forced = plan_table(&observation, Method::Restore, true);
        assert_eq!(forced.shards, vec![both(1), both(2)]);
        assert!(forced.parent);
        assert!(plan_table(&observation, Method::Analyze, true).whole_table);
    }

    #[test]
    fn a_moved_shard_needs_its_new_foreign_table() {
        // The cutover made a new foreign table; the shard's partitioned table kept its own,
        // and the target's own analysis estimates the same rows a little differently.
        let moved = shard(
            2,
            NodeAnalysis::Missing,
            node(10020.0, 0, 10000),
            -1.0,
            10000.0,
        );
        let observation = table(20000.0, vec![in_sync(1, 10000.0), moved]);
        let plan = plan_table(&observation, Method::Analyze, false);
        assert_eq!(
            plan.shards,
            vec![ShardAction {
                shard_id: 2,
                leaf: true,
                middle: false
            }]
        );
        assert!(!plan.parent && !plan.whole_table);
        // A copy is exact, and cheap: both get the target's numbers.
        let plan = plan_table(&observation, Method::Restore, false);
        assert_eq!(plan.shards, vec![both(2)]);
        assert!(!plan.parent);
    }

    #[test]
    fn changes_below_the_threshold_wait_and_above_it_refresh() {
        // 30% inserted into one shard and analyzed there: that shard, and the table (6,000
        // rows of 20,000 changed).
        let grown = shard(
            1,
            NodeAnalysis::Changed(6000),
            node(16000.0, 16000, 0),
            10000.0,
            10000.0,
        );
        let plan = plan_table(
            &table(20000.0, vec![grown, in_sync(2, 10000.0)]),
            Method::Restore,
            false,
        );
        assert_eq!(plan.shards, vec![both(1)]);
        assert!(plan.parent);
        // Updates that keep the size still count, as their number.
        let updated = shard(
            1,
            NodeAnalysis::Changed(3000),
            node(10000.0, 10000, 0),
            10000.0,
            10000.0,
        );
        let plan = plan_table(
            &table(20000.0, vec![updated, in_sync(2, 10000.0)]),
            Method::SampledAnalyze,
            false,
        );
        assert!(plan.whole_table);
        // 15% into one of 32 shards: the shard, not the table.
        let mut shards: Vec<ShardObservation> = (1..=32).map(|i| in_sync(i, 10000.0)).collect();
        shards[0] = shard(
            1,
            NodeAnalysis::Changed(1500),
            node(11500.0, 11500, 0),
            10000.0,
            10000.0,
        );
        let plan = plan_table(&table(320000.0, shards), Method::SampledAnalyze, false);
        assert_eq!(plan.shards, vec![both(1)]);
        assert!(!plan.parent && !plan.whole_table);
    }

    #[test]
    fn a_node_that_analyzed_by_itself_is_copied_again() {
        // Autovacuum analyzed the shard on its node after 8% inserts: the copy differs.
        let observation = table(
            20000.0,
            vec![
                shard(
                    1,
                    NodeAnalysis::None,
                    node(10800.0, 10800, 0),
                    10000.0,
                    10000.0,
                ),
                in_sync(2, 10000.0),
            ],
        );
        let plan = plan_table(&observation, Method::Restore, false);
        assert_eq!(plan.shards, vec![both(1)]);
        assert!(!plan.parent);
        // An ANALYZE through the coordinator would read the shard again for 8%: it waits.
        assert!(plan_table(&observation, Method::Analyze, false).is_empty());
    }

    #[test]
    fn an_unreachable_node_leaves_its_shards_and_the_table_alone() {
        let mut gone = shard(1, NodeAnalysis::None, node(0.0, 0, 0), -1.0, -1.0);
        gone.node = None;
        let observation = table(
            -1.0,
            vec![
                gone,
                shard(2, NodeAnalysis::Missing, node(10.0, 10, 10), -1.0, -1.0),
            ],
        );
        let plan = plan_table(&observation, Method::Analyze, false);
        assert_eq!(plan.unreachable, vec![1]);
        assert!(!plan.parent && !plan.whole_table);
        assert_eq!(plan.shards, vec![both(2)]);
    }

    #[test]
    fn a_schema_table_has_no_level_above_its_shard() {
        let mut observation = table(
            -1.0,
            vec![shard(1, NodeAnalysis::Missing, node(5.0, 5, 5), -1.0, -1.0)],
        );
        observation.has_parent_level = false;
        let plan = plan_table(&observation, Method::Analyze, false);
        assert!(!plan.parent && !plan.whole_table);
        assert_eq!(plan.shards, vec![both(1)]);
    }

    #[test]
    fn range_statistics_are_read_where_the_node_has_them() {
        assert!(node_column_stats_sql(170010).contains("s.range_bounds_histogram::text"));
        assert!(!node_column_stats_sql(150020).contains("range_bounds_histogram"));
    }
}
