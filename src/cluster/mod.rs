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
//! time). `throng query --data-dir <cluster.dir>` and the SQL endpoints read every partition's
//! history as one table.

pub mod member;
pub mod partition;

use std::collections::HashSet;

use geo::Centroid;

use crate::scenario::{SegmentId, SegmentMap};
use crate::transport::kafka::partition_of;

/// The region key (H3 cell at `key_res`, as the producers key records) of each segment's
/// centroid.
pub fn segment_keys(map: &SegmentMap, key_res: u8) -> Vec<(SegmentId, Option<String>)> {
    let res = h3o::Resolution::try_from(key_res).ok();
    map.segments()
        .iter()
        .map(|s| {
            let key = res.and_then(|res| {
                let c = s.polygon.centroid()?;
                Some(h3o::LatLng::new(c.y(), c.x()).ok()?.to_cell(res).to_string())
            });
            (s.id.clone(), key)
        })
        .collect()
}

/// The segments whose rows partition `partition` of `partitions` writes: those whose centroid's
/// region key lands on it. Every segment has exactly one owner, so the union of the partitions'
/// `segment_windows` holds each segment once per window. (A segment is counted from the pings of
/// its owner's partition: one that straddles a region boundary sees only its owner's side.)
pub fn owned_segments(
    keys: &[(SegmentId, Option<String>)],
    partition: i32,
    partitions: i32,
) -> HashSet<SegmentId> {
    keys.iter()
        .filter(|(_, k)| {
            // A segment without a key (no centroid) goes to partition 0 rather than nowhere.
            k.as_deref().map_or(0, |k| partition_of(k.as_bytes(), partitions)) == partition
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bund_segment_has_exactly_one_owner_whatever_the_partition_count() {
        let res = h3o::Resolution::Eleven;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund/segments.geojson");
        let map = SegmentMap::load(&path, res).unwrap();
        for key_res in [6u8, 9] {
            let keys = segment_keys(&map, key_res);
            for n in [1, 2, 4, 7] {
                let mut seen = HashSet::new();
                for p in 0..n {
                    for s in owned_segments(&keys, p, n) {
                        assert!(seen.insert(s.clone()), "{s:?} owned twice");
                    }
                }
                assert_eq!(seen.len(), map.segments().len(), "res {key_res}, {n} partitions");
            }
        }
        // At the default key resolution (6, ~36 km²) the Bund is one region: one owner for all.
        let keys = segment_keys(&map, 6);
        assert!(keys.iter().all(|(_, k)| k == &keys[0].1));
    }
}
