//! The cluster's collections as the catalog log describes them: every node reads the whole
//! log into one of these (it is small: creates and drops), so all agree on which collections
//! exist, their shards, and which nodes hold each shard's replicas.

use std::collections::BTreeMap;

use quiver_store::CollectionMeta;

use crate::catalog_log::CatalogEntry;

/// A collection of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterCollection {
    /// Its description.
    pub meta: CollectionMeta,
    /// The number of the catalog entry that created it: its logs' names carry it, so a
    /// collection dropped and created again never reads the old one's.
    pub incarnation: u64,
    /// Per shard, the nodes holding its replicas.
    pub placement: Vec<Vec<String>>,
}

impl ClusterCollection {
    /// Its number of shards.
    pub fn shards(&self) -> u32 {
        self.placement.len() as u32
    }

    /// Its replicas per shard.
    pub fn replication(&self) -> u32 {
        self.placement.first().map_or(0, |p| p.len() as u32)
    }

    /// The shards whose replicas include `node`.
    pub fn shards_on(&self, node: &str) -> Vec<u32> {
        (0..self.shards())
            .filter(|&s| self.placement[s as usize].iter().any(|n| n == node))
            .collect()
    }
}

/// Every collection of the cluster, as of catalog entry [`Topology::applied`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    collections: BTreeMap<String, ClusterCollection>,
    applied: u64,
}

impl Topology {
    /// Applies catalog entry `seq` (the next one): returns the collection it created or
    /// dropped. A create of a live name or a drop of a missing one changes nothing (appends
    /// check against the log first, so neither is in a log written by nodes).
    pub fn apply(&mut self, seq: u64, entry: CatalogEntry) -> Option<ClusterCollection> {
        self.applied = seq;
        match entry {
            CatalogEntry::Create { meta, placement } => {
                if self.collections.contains_key(&meta.name) {
                    tracing::warn!(collection = %meta.name, seq, "catalog entry creates a live collection; ignored");
                    return None;
                }
                // Nodes write placements through `place`; anything else is not served.
                let replication = placement.first().map_or(0, Vec::len);
                if placement.is_empty()
                    || placement.len() > crate::placement::MAX_SHARDS as usize
                    || replication == 0
                    || placement.iter().any(|p| p.len() != replication)
                {
                    tracing::error!(collection = %meta.name, seq, "catalog entry places shards impossibly; ignored");
                    return None;
                }
                let c = ClusterCollection {
                    meta,
                    incarnation: seq,
                    placement,
                };
                self.collections.insert(c.meta.name.clone(), c.clone());
                Some(c)
            }
            CatalogEntry::Drop { name } => self.collections.remove(&name),
            // Placement does not change: nothing to place or remove.
            CatalogEntry::Describe {
                name,
                incarnation,
                description,
            } => {
                if let Some(c) = self
                    .collections
                    .get_mut(&name)
                    .filter(|c| c.incarnation == incarnation)
                {
                    c.meta.describe(&description);
                }
                None
            }
        }
    }

    /// The number of the last entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// A collection by name.
    pub fn get(&self, name: &str) -> Option<&ClusterCollection> {
        self.collections.get(name)
    }

    /// Every collection, by name.
    pub fn collections(&self) -> impl Iterator<Item = &ClusterCollection> {
        self.collections.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> CollectionMeta {
        CollectionMeta {
            name: name.into(),
            dim: 4,
            metric: "l2".into(),
            ..CollectionMeta::default()
        }
    }

    #[test]
    fn creates_and_drops_give_incarnations_and_placement() {
        let mut t = Topology::default();
        let placement = vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["c".into(), "a".into()],
        ];
        let c = t
            .apply(
                1,
                CatalogEntry::Create {
                    meta: meta("docs"),
                    placement: placement.clone(),
                },
            )
            .unwrap();
        assert_eq!((c.incarnation, c.shards(), c.replication()), (1, 2, 2));
        assert_eq!(c.shards_on("a"), [0, 1]);
        assert_eq!(c.shards_on("c"), [1]);
        assert!(c.shards_on("z").is_empty());
        // A repeated create of a live name changes nothing.
        assert!(t
            .apply(
                2,
                CatalogEntry::Create {
                    meta: meta("docs"),
                    placement: vec![vec!["z".into()]],
                },
            )
            .is_none());
        assert_eq!(t.get("docs").unwrap().placement, placement);
        assert!(t
            .apply(
                3,
                CatalogEntry::Drop {
                    name: "docs".into()
                }
            )
            .is_some());
        assert!(t.get("docs").is_none());
        assert!(t
            .apply(
                4,
                CatalogEntry::Drop {
                    name: "docs".into()
                }
            )
            .is_none());
        let again = t
            .apply(
                5,
                CatalogEntry::Create {
                    meta: meta("docs"),
                    placement,
                },
            )
            .unwrap();
        assert_eq!(again.incarnation, 5);
        assert_eq!(t.applied(), 5);
        assert_eq!(t.collections().count(), 1);
    }
}
