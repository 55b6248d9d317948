-- A stream table's rows are kept in a storage table of Shoal's own (shoal.stream_<id>, one row
-- per distinct result row with its multiplicity and bookkeeping), and the name users query
-- (relid) is a view that shows them as the query returns them. NULL: the layout before this
-- version, where relid is the storage itself; `shoal init` moves such stream tables after
-- applying the migrations (the view's definition comes from the query's analysis).
ALTER TABLE shoal.stream_table ADD COLUMN storage_relid oid UNIQUE;
