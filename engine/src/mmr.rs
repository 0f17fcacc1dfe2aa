//! Maximal marginal relevance (MMR): re-ranks a query's nearest candidates so that each next
//! pick is relevant to the query yet unlike those picked before it (Qdrant's
//! `nearest` + `mmr`, LangChain's `max_marginal_relevance_search`).
//!
//! The first pick is the candidate most similar to the query; each next one maximises
//! `λ·sim(query, c) − (1 − λ)·max over picked p of sim(c, p)`, with `λ = 1 − diversity`. Ties
//! go as Qdrant's core decides them: the candidates wait in a list from which a pick is
//! swap-removed, and the last of equal maxima in that list wins.

/// The order in which MMR picks up to `limit` of `n` candidates: `relevance[i]` is candidate
/// `i`'s similarity to the query, `similarity(i, j)` that of two candidates; `diversity` in
/// [0, 1] (0: by relevance alone).
pub fn mmr_order(
    relevance: &[f32],
    similarity: &dyn Fn(usize, usize) -> f32,
    diversity: f32,
    limit: usize,
) -> Vec<usize> {
    let lambda = 1.0 - diversity;
    let mut pending: Vec<usize> = (0..relevance.len()).collect();
    // Each pending candidate's greatest similarity to a pick so far, by candidate.
    let mut nearest_pick = vec![f32::NEG_INFINITY; relevance.len()];
    let mut picked = Vec::with_capacity(limit.min(relevance.len()));
    while picked.len() < limit && !pending.is_empty() {
        let score = |c: usize| match picked.is_empty() {
            true => relevance[c],
            false => lambda * relevance[c] - (1.0 - lambda) * nearest_pick[c],
        };
        // The last of equal maxima.
        let mut best = 0;
        for (at, &c) in pending.iter().enumerate().skip(1) {
            if score(c) >= score(pending[best]) {
                best = at;
            }
        }
        let pick = pending.swap_remove(best);
        for &c in &pending {
            nearest_pick[c] = nearest_pick[c].max(similarity(c, pick));
        }
        picked.push(pick);
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written out: the most relevant first, then the one least like it when diversity
    /// weighs in, the next most relevant when it does not.
    #[test]
    fn picks_trade_relevance_for_difference() {
        // Candidates 0 and 1 are near copies; 2 is less relevant but different.
        let relevance = [0.9, 0.89, 0.6];
        let sim = |a: usize, b: usize| {
            let pair = (a.min(b), a.max(b));
            match pair {
                (0, 1) => 0.99,
                (0, 2) | (1, 2) => 0.1,
                _ => 1.0,
            }
        };
        assert_eq!(mmr_order(&relevance, &sim, 0.0, 3), vec![0, 1, 2]);
        assert_eq!(mmr_order(&relevance, &sim, 0.5, 3), vec![0, 2, 1]);
        assert_eq!(mmr_order(&relevance, &sim, 0.5, 2), vec![0, 2]);
        assert_eq!(mmr_order(&relevance, &sim, 0.5, 9).len(), 3);
        assert!(mmr_order(&[], &sim, 0.5, 3).is_empty());
    }

    /// Equal scores: the last of them in the pending list, after swap-removals.
    #[test]
    fn ties_go_to_the_last_pending() {
        let relevance = [0.5, 0.5, 0.5, 0.5];
        let sim = |_: usize, _: usize| 0.0;
        // Seed: the last (3); pending becomes [0, 1, 2]; then 2, pending [0, 1]; then 1.
        assert_eq!(mmr_order(&relevance, &sim, 0.3, 4), vec![3, 2, 1, 0]);
    }
}
