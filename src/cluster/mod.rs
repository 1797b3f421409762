//! Cluster mode (`[cluster]`): the instances of one consumer group share a topic's partitions, and
//! each partition's window state lives with the partition, not with the instance.
//!
//! Every instance is a `member`: the group assigns it partitions; for each it loads the
//! partition's checkpoint from the shared folder (`partition`), seeks to the offset stored with
//! it, and runs the partition's records through its own flow, writing that partition's history
//! under `<cluster.dir>/partitions/<topic>-<n>/`. A partition revoked in a rebalance is
//! checkpointed before the callback returns, so its next owner starts exactly where this one
//! stopped; an instance killed outright leaves its last checkpoint, and the next owner reads the
//! messages after it again, making the same decisions (the partition's clock is its own event
//! time). Each partition publishes its closed windows to the windows topic; the `city` stage
//! merges them and evaluates the segments once for the whole city (recorded by one instance,
//! shown by every instance). `throng query --data-dir <cluster.dir>` and the SQL endpoints read
//! every partition's cells and the city's segments as one set of tables.

pub mod city;
pub mod member;
pub mod partition;
pub mod windows;
