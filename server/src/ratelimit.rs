//! Rate limits per client: a token bucket on requests and one on vectors (upserted or searched)
//! per API key, or per peer address when no key identifies the client. A request over either
//! limit gets RESOURCE_EXHAUSTED saying when to retry (also as `retry-after-ms` metadata);
//! refusals are counted in `/metrics` (`quiver_rate_limited_total{limit}`). The defaults are
//! far above what one well-behaved client sends; 0 turns a limit off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::Status;

/// Who a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// The n-th configured API key.
    Key(usize),
    /// A peer address (no key configured, or health checks).
    Peer(IpAddr),
    /// Neither known (an in-process transport).
    Unknown,
}

/// The limits, per client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Requests per second (0: no limit).
    pub requests_per_s: f64,
    /// Requests a client may send at once after being idle.
    pub request_burst: f64,
    /// Vectors (upserted or searched) per second (0: no limit).
    pub vectors_per_s: f64,
    /// Vectors at once after being idle.
    pub vector_burst: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            requests_per_s: 100_000.0,
            request_burst: 100_000.0,
            vectors_per_s: 5_000_000.0,
            vector_burst: 5_000_000.0,
        }
    }
}

/// Most clients remembered; past it, those whose buckets are full again are forgotten.
const MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes `n` tokens (at most `burst` counted) or says how long until they are there.
    fn take(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        let n = n.min(burst);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / rate))
        }
    }

    fn full_at(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate >= burst
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Requests per second.
    Requests,
    /// Vectors per second.
    Vectors,
}

impl Limit {
    /// Its metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Vectors => "vectors",
        }
    }
}

/// The buckets of every client.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    clients: Mutex<HashMap<Client, [Bucket; 2]>>,
}

impl RateLimiter {
    /// A limiter with `limits` per client.
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Counts `n` units of `limit` against `client`; the wait before a retry when over.
    pub fn take(&self, client: Client, limit: Limit, n: f64) -> Result<(), Duration> {
        let l = &self.limits;
        let (rate, burst, i) = match limit {
            Limit::Requests => (l.requests_per_s, l.request_burst.max(1.0), 0),
            Limit::Vectors => (l.vectors_per_s, l.vector_burst.max(1.0), 1),
        };
        if rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut clients = self.clients.lock();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            let (rr, rb, vr, vb) = (
                l.requests_per_s.max(f64::MIN_POSITIVE),
                l.request_burst.max(1.0),
                l.vectors_per_s.max(f64::MIN_POSITIVE),
                l.vector_burst.max(1.0),
            );
            clients.retain(|_, b| !(b[0].full_at(rr, rb, now) && b[1].full_at(vr, vb, now)));
        }
        let full = |burst: f64| Bucket {
            tokens: burst,
            at: now,
        };
        let buckets = clients.entry(client).or_insert_with(|| {
            [
                full(l.request_burst.max(1.0)),
                full(l.vector_burst.max(1.0)),
            ]
        });
        buckets[i].take(n, rate, burst, now)
    }

    /// [`Self::take`] as a gRPC status: RESOURCE_EXHAUSTED with the wait, counted in
    /// `metrics`.
    pub fn check(
        &self,
        client: Client,
        limit: Limit,
        n: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Result<(), Status> {
        self.take(client, limit, n as f64).map_err(|wait| {
            metrics
                .rate_limited
                .with_label_values(&[limit.label()])
                .inc();
            exhausted(limit, wait)
        })
    }
}

/// RESOURCE_EXHAUSTED naming the limit and the wait (in the message and as `retry-after-ms`).
pub fn exhausted(limit: Limit, wait: Duration) -> Status {
    let ms = wait.as_millis().max(1) as u64;
    let mut s = Status::resource_exhausted(format!(
        "rate limit of {} per second reached for this client: retry in {ms} ms",
        limit.label()
    ));
    if let Ok(v) = ms.to_string().parse() {
        s.metadata_mut().insert("retry-after-ms", v);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_say_when_to_retry() {
        let r = RateLimiter::new(RateLimits {
            requests_per_s: 10.0,
            request_burst: 2.0,
            vectors_per_s: 100.0,
            vector_burst: 100.0,
        });
        let a = Client::Key(0);
        let b = Client::Peer("10.0.0.1".parse().unwrap());
        assert!(r.take(a, Limit::Requests, 1.0).is_ok());
        assert!(r.take(a, Limit::Requests, 1.0).is_ok());
        let wait = r.take(a, Limit::Requests, 1.0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another client has its own bucket.
        assert!(r.take(b, Limit::Requests, 1.0).is_ok());
        // Vectors: a request larger than the burst counts as a whole burst.
        assert!(r.take(a, Limit::Vectors, 500.0).is_ok());
        assert!(r.take(a, Limit::Vectors, 1.0).is_err());
        std::thread::sleep(Duration::from_millis(120));
        assert!(r.take(a, Limit::Requests, 1.0).is_ok());
        // Off.
        let off = RateLimiter::new(RateLimits {
            requests_per_s: 0.0,
            ..RateLimits::default()
        });
        for _ in 0..1000 {
            assert!(off.take(a, Limit::Requests, 1.0).is_ok());
        }
        let s = exhausted(Limit::Vectors, Duration::from_millis(250));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.metadata().get("retry-after-ms").unwrap(), "250");
        assert!(s.message().contains("retry in 250 ms"), "{}", s.message());
    }
}
