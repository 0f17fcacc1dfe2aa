//! The scalar reference kernels: plain Rust with eight independent accumulators, so the
//! compiler vectorises them for the build's baseline. Every other level is tested against
//! these.

use half::f16;

#[inline]
fn sum8(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Inner product.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    sum8(acc) + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Squared Euclidean distance.
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let t = x[i] - y[i];
            acc[i] += t * t;
        }
    }
    sum8(acc)
        + ra.iter()
            .zip(rb)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
}

/// Inner product of an f32 query and an f16 vector.
#[inline]
pub fn dot_f16(q: &[f32], v: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (cq, cv) = (q.chunks_exact(8), v.chunks_exact(8));
    let (rq, rv) = (cq.remainder(), cv.remainder());
    for (x, y) in cq.zip(cv) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    sum8(acc) + rq.iter().zip(rv).map(|(x, y)| x * y.to_f32()).sum::<f32>()
}

/// Squared L2 distance of an f32 query and an f16 vector.
#[inline]
pub fn l2_sq_f16(q: &[f32], v: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (cq, cv) = (q.chunks_exact(8), v.chunks_exact(8));
    let (rq, rv) = (cq.remainder(), cv.remainder());
    for (x, y) in cq.zip(cv) {
        for i in 0..8 {
            let t = x[i] - y[i].to_f32();
            acc[i] += t * t;
        }
    }
    sum8(acc)
        + rq.iter()
            .zip(rv)
            .map(|(x, y)| (x - y.to_f32()) * (x - y.to_f32()))
            .sum::<f32>()
}
