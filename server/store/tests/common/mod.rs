//! Helpers shared by the store's integration tests: a seeded generator and a small
//! collection description.
#![allow(dead_code)]

use quiver_store::{CollectionMeta, IndexConfig};

/// SplitMix64: a small seeded generator.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// An l2 collection of `dim`-d f32 vectors, IVF4 PQ2 once trained (at `train_at` points; 0:
/// when asked).
pub fn small_meta(name: &str, dim: usize, train_at: u64) -> CollectionMeta {
    CollectionMeta {
        name: name.into(),
        dim,
        metric: "l2".into(),
        index: IndexConfig {
            nlist: 4,
            pq_m: 2,
            refine: "f32".into(),
            refine_factor: 0,
            seed: 7,
            train_at,
        },
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    }
}
