//! A property test of stream tables: the differential refresh of a random query over random
//! changes must leave the stream table equal, as a bag, to the query recomputed.
//!
//! Queries come from a small grammar of the shapes the analyzer maintains differentially
//! ([`grammar`]): projections with WHERE, inner joins with ON and USING, outer joins of two
//! tables, GROUP BY with every supported aggregate, FILTER and HAVING, DISTINCT, UNION \[ALL\]
//! and window functions with PARTITION BY, over two tables whose columns have small domains
//! (NULLs, duplicates, and equal integer and numeric values are common). A case ([`case`]) adds
//! the tables' first rows and batches of inserts, updates and deletes. Running it ([`run()`])
//! creates the storage with a full refresh on a plain PostgreSQL server, then after each batch
//! refreshes differentially and compares the stream table's contents with the query, `EXCEPT
//! ALL` both ways; an error at creation or refresh is a failure too. A failing case is shrunk
//! (batches and rows dropped, the query simplified) while it still fails, and shown as SQL to
//! paste, with its seed: case `i` of a run from seed `s` is [`run::case_of`]`(s + i)`.
//!
//! Queries the analyzer does not maintain differentially are skipped: full refresh is a
//! recomputation, there is nothing to compare.

pub mod case;
pub mod grammar;
pub mod run;

pub use case::{gen_case, script, shrinks, Case, Change};
pub use grammar::{gen_query, simplify, Query};
pub use run::{case_of, run, run_case, shrink, Failure, Found, Outcome, Summary};
