//! Where a collection's points and replicas go: a point's shard is a fixed hash of its id
//! modulo the shard count (the same on every node and version), and a shard's replicas are
//! placed on distinct nodes, spread so that each node holds about as many as the others.
//! A write is split by shard here ([`split_op`]): each shard's log gets only its points, and
//! ops that are not about listed ids (a delete by filter, a description change) go to every
//! shard.

use quiver_store::wal::Op;

use crate::error::{ClusterError, Result};

/// Most shards a collection may have.
pub const MAX_SHARDS: u32 = 1024;

/// The shard of point `id` in a collection of `shards` shards.
pub fn shard_of(id: u64, shards: u32) -> u32 {
    // splitmix64's finaliser: consecutive ids spread evenly; fixed forever (the placement of
    // every stored point depends on it).
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(shards.max(1))) as u32
}

/// Places `shards` shards of `replication` replicas each on `nodes` (sorted here): shard `s`'s
/// replicas go to consecutive nodes from `s × replication` on, so replicas of one shard are
/// on distinct nodes and every node holds ⌊S·R/N⌋ or ⌈S·R/N⌉ of them.
pub fn place(nodes: &[String], shards: u32, replication: u32) -> Result<Vec<Vec<String>>> {
    let invalid = |field: &'static str, reason: String| {
        ClusterError::Store(quiver_store::StoreError::Invalid { field, reason })
    };
    if shards == 0 || shards > MAX_SHARDS {
        return Err(invalid(
            "shard_number",
            format!("{shards} shards: 1 to {MAX_SHARDS}"),
        ));
    }
    let mut nodes = nodes.to_vec();
    nodes.sort();
    nodes.dedup();
    if replication == 0 || replication as usize > nodes.len() {
        return Err(invalid(
            "replication_factor",
            format!(
                "{replication} replicas of each shard on {} live node{}: 1 to the number of live nodes",
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    let n = nodes.len();
    Ok((0..shards as usize)
        .map(|s| {
            (0..replication as usize)
                .map(|r| nodes[(s * replication as usize + r) % n].clone())
                .collect()
        })
        .collect())
}

/// `op` split into the ops each shard's log gets, by shard (shards with nothing to do are
/// left out; an op not about listed ids goes to every shard).
pub fn split_op(op: Op, shards: u32) -> Vec<(u32, Op)> {
    if shards <= 1 {
        return vec![(0, op)];
    }
    let n = shards as usize;
    match op {
        Op::Upsert {
            ids,
            vectors,
            dim,
            payloads,
        } => {
            /// A shard's ids, vectors and payloads.
            type Part = (Vec<u64>, Vec<f32>, Vec<Vec<u8>>);
            let mut parts: Vec<Part> = (0..n).map(|_| Default::default()).collect();
            for (i, &id) in ids.iter().enumerate() {
                let part = &mut parts[shard_of(id, shards) as usize];
                part.0.push(id);
                part.1.extend_from_slice(&vectors[i * dim..(i + 1) * dim]);
                if let Some(p) = payloads.get(i) {
                    part.2.push(p.clone());
                }
            }
            parts
                .into_iter()
                .enumerate()
                .filter(|(_, p)| !p.0.is_empty())
                .map(|(s, (ids, vectors, payloads))| {
                    (
                        s as u32,
                        Op::Upsert {
                            ids,
                            vectors,
                            dim,
                            payloads,
                        },
                    )
                })
                .collect()
        }
        Op::Delete { ids } => by_ids(ids, shards)
            .map(|(s, ids)| (s, Op::Delete { ids }))
            .collect(),
        Op::SetPayload { ids, edit } => by_ids(ids, shards)
            .map(|(s, ids)| {
                (
                    s,
                    Op::SetPayload {
                        ids,
                        edit: edit.clone(),
                    },
                )
            })
            .collect(),
        op @ (Op::DeleteFilter { .. } | Op::Describe(_)) => {
            (0..shards).map(|s| (s, op.clone())).collect()
        }
    }
}

/// `ids` grouped by shard (non-empty groups only).
fn by_ids(ids: Vec<u64>, shards: u32) -> impl Iterator<Item = (u32, Vec<u64>)> {
    let mut parts: Vec<Vec<u64>> = vec![Vec::new(); shards as usize];
    for id in ids {
        parts[shard_of(id, shards) as usize].push(id);
    }
    parts
        .into_iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(s, p)| (s as u32, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn shards_are_fixed_and_even() {
        // Fixed values: a change would move every stored point.
        assert_eq!(
            [0u64, 1, 2, 3, 1 << 40].map(|id| shard_of(id, 7)),
            [2, 2, 4, 2, 5]
        );
        assert_eq!(
            [0u64, 1, 2, 3, 4, 5].map(|id| shard_of(id, 2)),
            [1, 1, 0, 1, 0, 0]
        );
        assert_eq!(shard_of(12345, 1), 0);
        let mut counts = [0usize; 4];
        for id in 0..40_000u64 {
            counts[shard_of(id, 4) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn replicas_of_a_shard_are_on_distinct_nodes_and_spread() {
        for n in 1..6 {
            for r in 1..=n as u32 {
                for s in 1..8u32 {
                    let p = place(&names(n), s, r).unwrap();
                    assert_eq!(p.len(), s as usize);
                    let mut load = vec![0usize; n];
                    for nodes in &p {
                        let mut d = nodes.clone();
                        d.sort();
                        d.dedup();
                        assert_eq!(d.len(), r as usize, "{p:?}");
                        for x in nodes {
                            load[x[5..].parse::<usize>().unwrap()] += 1;
                        }
                    }
                    let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
                    assert!(hi - lo <= 1, "{n} nodes, {s}x{r}: {load:?}");
                }
            }
        }
        assert_eq!(
            place(&names(3), 2, 2).unwrap(),
            vec![vec!["node-0", "node-1"], vec!["node-2", "node-0"]]
        );
    }

    #[test]
    fn impossible_placements_are_refused_naming_the_field() {
        let e = place(&names(2), 1, 3).unwrap_err().to_string();
        assert!(
            e.contains("replication_factor") && e.contains("2 live nodes"),
            "{e}"
        );
        let e = place(&names(2), 0, 1).unwrap_err().to_string();
        assert!(e.contains("shard_number"), "{e}");
        assert!(place(&[], 1, 1).is_err());
    }

    #[test]
    fn a_write_splits_by_shard_and_keeps_every_point() {
        let ids: Vec<u64> = (0..50).collect();
        let op = Op::Upsert {
            vectors: ids.iter().flat_map(|&i| [i as f32, -(i as f32)]).collect(),
            ids: ids.clone(),
            dim: 2,
            payloads: ids.iter().map(|i| i.to_le_bytes().to_vec()).collect(),
        };
        let parts = split_op(op, 3);
        let mut seen = Vec::new();
        for (s, part) in parts {
            let Op::Upsert {
                ids,
                vectors,
                payloads,
                ..
            } = part
            else {
                panic!("an upsert splits into upserts")
            };
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(shard_of(*id, 3), s);
                assert_eq!(vectors[i * 2..i * 2 + 2], [*id as f32, -(*id as f32)]);
                assert_eq!(payloads[i], id.to_le_bytes());
                seen.push(*id);
            }
        }
        seen.sort();
        assert_eq!(seen, ids);
        let parts = split_op(
            Op::DeleteFilter {
                filter: "{}".into(),
            },
            3,
        );
        assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1, 2]);
        let parts = split_op(Op::Delete { ids: vec![5] }, 3);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, shard_of(5, 3));
    }
}
