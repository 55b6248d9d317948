//! The pure core of stream tables: analysis of the defining query, the stream table's storage,
//! and the SQL of full and differential refreshes, run on the coordinator; plus the topology diff
//! that tells the scheduler when change capture must start over. Nothing here touches a database.
//!
//! # Model
//!
//! A stream table holds the result of its query as a *bag*: a result row present n times is
//! stored once with `__shoal_count = n`, in a storage table of Shoal's own
//! ([`storage_table`], `shoal.stream_<id>`) that every refresh statement names. Users query a
//! view at the stream table's name ([`view_ddl`]) showing exactly the query's rows: the visible
//! columns, each stored row repeated `__shoal_count` times where the query keeps duplicates, so
//! `count(*)`, sums and joins over it agree with the query and no bookkeeping is in sight.
//! Every source relation (distributed or reference, an
//! ordinary relation on the coordinator) has, for a refresh window, two relations of changes with
//! its columns: Δ⁻ (old versions of deleted and updated rows) and Δ⁺ (new versions of inserted and
//! updated rows), so that, as bags, `new = old − Δ⁻ + Δ⁺`. In delta queries they are one relation
//! ΔT of signed rows: Δ⁻ with `__shoal_delta = −1`, Δ⁺ with `+1`. A row changed several times in
//! a window is fine: its intermediate versions appear once in each and cancel.
//!
//! # Joins: inclusion–exclusion over the changed sources
//!
//! Differential queries are `σ(T₁ ⋈ … ⋈ Tₖ)` (inner joins written with ON, USING, commas or
//! CROSS JOIN, aliased or not), then projected or grouped. With signed bags, `Tᵢ_old = Tᵢ_new − ΔTᵢ`, so
//!
//! ```text
//! Δ(T₁ ⋈ … ⋈ Tₖ) = Π Tᵢ_new − Π (Tᵢ_new − ΔTᵢ)
//!                = Σ over non-empty S ⊆ changed sources of (−1)^(|S|+1) · (⋈ ΔTᵢ for i ∈ S, Tⱼ_new otherwise)
//! ```
//!
//! For two tables: `ΔA ⋈ B_new + A_new ⋈ ΔB − ΔA ⋈ ΔB`. Each term is the query's own FROM/WHERE,
//! joins kept as written, with some sources replaced by their signed deltas under the same alias,
//! so the user's expressions apply unchanged: an unqualified USING column is still the merged
//! one, a join alias still names the join. A row's sign is the product of its delta rows' signs
//! (each delta's sign column named apart, `__shoal_sign<i>`, so that it is reachable through a
//! join alias hiding the source's name) times the term's sign. Only the new state of the sources is read, never the old one (which would need
//! `new EXCEPT ALL Δ⁺ UNION ALL Δ⁻`, a scan of the whole table); a source without changes adds
//! no term, so an unchanged join partner is only probed by the (small) deltas. A self-join is
//! two sources that share a delta. Terms grow as 2^(changed sources) − 1. Where several terms
//! read a delta, it is read out of the change buffer once, into a materialized CTE they share.
//!
//! An outer join of two relations (LEFT, RIGHT or FULL, alone in FROM) is its inner join plus
//! the NULL-extended rows of its preserved sides that have no match; the inner part's delta is
//! the above, the unmatched part's is derived in `outer.rs` from each preserved row's match
//! count in the other side's new state and in its delta, for only the rows a change reaches.
//!
//! A UNION ALL of projections is the bag sum of its branches, so its delta is the union of the
//! branches' terms, each over its own sources and projecting its own expressions; UNION is the
//! same bag shown once per row, as DISTINCT is (`union.rs`).
//!
//! # Subqueries, CTEs and semi-joins
//!
//! A non-recursive CTE is the same as its query written at each place FROM names it, so it is
//! inlined first (`inline.rs`); a CTE read twice is two sources sharing a delta, like a self-join.
//! A subquery in FROM over one table, with a projection and a WHERE only (`subquery.rs`), is a
//! source whose delta is the table's delta put through the same projection and filter, its sign
//! carried along. `EXISTS`, `NOT EXISTS` and `IN (subquery)` in WHERE (`semi.rs`), each over one
//! table, correlated by its WHERE, are semi- and anti-joins: a row of the outer join J is kept
//! when the subquery's match count is (or is not) positive. With the subquery's source S:
//!
//! ```text
//! Δ(J ⋉ S) = (ΔJ ⋉ S_old) + (J_new rows whose verdict changed, signed +1 or −1)
//! ```
//!
//! `S_old` is never read: its match count is the new count minus the delta's. The second part
//! reaches only rows of J that a changed row of S matches, computing both counts for them
//! (LATERAL) and keeping those whose verdict flips.
//!
//! # Projection, DISTINCT and duplicates
//!
//! Without grouping, the signed rows are summed per distinct output row and merged: the sum is
//! added to `__shoal_count`, a row reaching 0 is deleted, a new row is inserted with its sum.
//! Because the stored count is the exact multiplicity, deleting one of two equal rows leaves one,
//! and DISTINCT needs nothing more: its result is the stored rows (each count > 0), while a
//! query without DISTINCT is the stored rows repeated `__shoal_count` times ([`contents_sql`],
//! the view's body). A grouped query's result is the stored groups as they are. A query only
//! full refresh maintains is stored grouped by all its columns with the count, and shown
//! repeated like a projection, whatever its shape.
//!
//! Rows are looked up by `__shoal_row_id`, a stored generated column hashing the row key (all
//! visible columns, or the group key) with `hash_record_extended`, which uses each type's own
//! hash function and so agrees with `=` (1.0 and 1.00 hash alike). The match is then confirmed
//! column by column with `IS NOT DISTINCT FROM`, so NULLs match and a hash collision is harmless.
//!
//! # Aggregates
//!
//! Per group, the delta is folded into: the change of the row count (`sum(delta)`), of the count
//! of non-NULL inputs (`sum(delta) where x is not null`), and of the sum (`sum(x * delta)`). The
//! stored state is: COUNT(*) and COUNT(x) as their values; SUM(x) as its value plus the hidden
//! non-NULL count `__shoal_nn_<j>`, so that a sum whose inputs all vanish becomes NULL, not 0;
//! AVG(x) as a hidden running sum `__shoal_sum_<j>` and count, the average being their quotient;
//! group keys absent from the select list as hidden `__shoal_key_<i>`. A group whose row count
//! reaches 0 is deleted; the single row of an aggregate without GROUP BY always stays.
//!
//! MIN and MAX cannot be undone from a delta. For MIN the candidate is `least(stored minimum,
//! smallest inserted value)`. If no deleted value is ≤ the candidate, the candidate is still
//! present and smallest, so it is the new minimum. Otherwise the group is *flagged*, and the
//! MIN/MAX of all flagged groups are recomputed from the sources' new state in one grouped query
//! restricted to those groups (a semi-join on the key values, so an index on the group key or
//! partition pruning applies; without one it is a single scan, not one per group; groups with a
//! NULL key go through a null-safe variant). An uncorrelated guard skips the query when nothing is
//! flagged. MAX is symmetric. All of it — deltas, stored state, rescans and the merge — is one
//! `WITH ... MERGE` statement.
//!
//! `count(DISTINCT x)` cannot be undone from the group's state either (whether a deleted value
//! was the last of its kind in the group), so each one has a *values table* beside the storage
//! (`distinct.rs`): every group's non-NULL values with the number of rows that have each. A
//! delta's per-(group, value) sums, set against those counts, tell the values that appear and
//! those that vanish, and the distinct count moves by their difference; then the sums are
//! merged into the values table. No source is read. `sum(DISTINCT x)` and `avg(DISTINCT x)`: a
//! group whose deltas have a non-NULL `x` is flagged the same way and recomputed in the same
//! rescan as MIN/MAX (`min`/`max` with DISTINCT are the plain ones); only the value is stored.
//! The cost is a read of the flagged groups' rows, so it pays where groups are many and small.
//! Each key of the rescan is also compared with the array of the flagged groups' keys, computed
//! before the scan: a parameter postgres_fdw sends to the workers, so that they return only
//! those groups' rows (an exact semi-join on the whole key follows).
//!
//! `bool_and(x)` (`every`) and `bool_or(x)` are kept as the count of non-NULL inputs and of the
//! deciding ones (false for AND, true for OR), both updated by deltas: AND is true when no false
//! input remains, OR when a true one does, NULL without input. `string_agg` and `array_agg`
//! have no inverse: a group with any changed row is flagged and recomputed in the same rescan,
//! with the call as written (DISTINCT, ORDER BY and FILTER included).
//!
//! A FILTER is folded into the argument: `agg(x) FILTER (WHERE c)` is `agg(CASE WHEN c THEN x
//! END)` and `count(*) FILTER (WHERE c)` is `count(CASE WHEN c THEN 1 END)`, equal because these
//! aggregates skip NULLs and agree over no rows; the deltas then need nothing else.
//!
//! HAVING does not change what is stored: every group is kept with its state, and the condition,
//! rewritten over the stored keys and aggregates, is the view's WHERE. Aggregates only HAVING
//! uses are stored hidden (`__shoal_agg_<j>`) and maintained like the others. So a group crossing
//! the condition either way needs nothing more than its own exact state.
//!
//! # Window functions
//!
//! When all the window functions of a query share one PARTITION BY, a partition's rows depend
//! on its own joined rows only, and a condition on the partition key in WHERE removes whole
//! partitions before windows are computed. A refresh takes the partition keys of every delta
//! row, deletes the stored rows of those partitions (found by a row id hashing the hidden
//! partition key columns `__shoal_part_<i>`), and inserts the query's rows restricted to those
//! partitions, counted per distinct row and shown repeated as any projection is (`window.rs`).
//!
//! # Refusals
//!
//! Anything whose delta this algebra does not give exactly is refused in differential mode with
//! an [`Unsupported`] naming the part: outer joins other than one of two tables alone in FROM
//! with ON, NATURAL joins and column alias lists in FROM
//! (both depend on the tables' column lists, which a delta reads only in part), recursive
//! CTEs, subqueries with aggregates, grouping, joins, DISTINCT, LIMIT, `*` or outer references
//! (in FROM or in EXISTS/IN), `NOT IN (subquery)` (NULLs make it differ from NOT EXISTS: write
//! that), EXISTS/IN under OR or together with an outer join or window functions,
//! INTERSECT/EXCEPT, UNION of grouped, DISTINCT or windowed branches or mixed with UNION ALL,
//! window functions without PARTITION BY, with different ones, over expressions or with
//! GROUP BY or DISTINCT, HAVING on columns that are neither keys nor
//! aggregated, ORDER BY/LIMIT, DISTINCT ON, aggregates other than count/sum/avg/min/max,
//! bool_and/bool_or/every and string_agg/array_agg, ORDER BY in the others' calls, expressions
//! over aggregates, volatile or time-dependent values.
//! [`Mode::Auto`] then chooses full refresh and says why. Full refresh (TRUNCATE + INSERT into
//! the storage of the query grouped with its multiplicities) handles every query.
//!
//! # What the caller must guarantee
//!
//! - The statements of one refresh run in one transaction, together with discarding the changes
//!   they consumed (or advancing the frontier), so a crash repeats the whole refresh or none of it.
//! - Join terms and MIN/MAX rescans read the sources' *current* state as the window's new state:
//!   it must be exactly the old state plus the window's changes. A change committed on a source
//!   after the window's end but visible to the refresh would be counted wrongly (it is in the
//!   state but not in the deltas). Single-source projections, filters and count/sum/avg never read
//!   source state and have no such requirement. The same holds for a full refresh and the frontier
//!   it starts from.
//! - Source relations are named as the query names them ([`SourceRef`]), so refreshes must run
//!   with the search_path the query was analyzed under (or the query must qualify its tables).
//! - Source tables have no columns whose names start with `__shoal_`.
//!
//! # Limits
//!
//! Row keys must have a hash function (`json`, `point` have none: use `jsonb`, or full mode) and
//! an equality operator; floating-point sums and averages drift from a recomputation by rounding.
//! The join terms grow as 2^(changed sources) − 1. Whether a delta probes its join partners by
//! index or hashes them whole is the planner's choice, so change tables should be analyzed.

mod aggregate;
mod analysis;
pub mod decode;
mod distinct;
mod error;
mod expr;
mod from;
mod having;
mod inline;
mod layout;
mod outer;
mod plan;
mod refresh;
pub mod runtime;
mod semi;
mod subquery;
pub mod topology;
mod union;
mod window;

pub use distinct::{values_ddl_by_table, values_table, values_tables};
pub use error::{AnalyzeError, GenerateError, Unsupported};
pub use expr::AggFunc;
pub use from::{OuterJoin, OuterKind};
pub use layout::{
    key_index, plan_for_storage, storage_table, upgrade_sql, view_ddl, OldTable, STORAGE_SCHEMA,
};
pub use plan::{
    analyze, choose_mode, Aggregate, ChosenMode, ColumnRole, Differential, GroupKey, Grouping,
    Maintenance, Mode, OutputColumn, QueryPlan, Source, SourceRef, Subquery,
};
pub use refresh::{
    contents_sql, differential_refresh_sql, full_refresh_sql, probe_sql, storage_columns,
    storage_ddl, typed_columns, ColumnType, DeltaRelations, COUNT_COLUMN, DELTA_COLUMN,
    ROW_ID_COLUMN,
};
pub use semi::SemiJoin;
pub use topology::{
    diff_workers, needs_reinit, needs_reinit_given_drained, LiveWorker, TopologyChange, WorkerSlot,
};
pub use union::{Union, UnionBranch};
pub use window::Window;

#[cfg(test)]
mod shape_tests;
#[cfg(test)]
mod subquery_tests;
#[cfg(test)]
mod tests;
