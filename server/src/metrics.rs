//! Prometheus metrics of the service, served as text on `--metrics-listen` at `/metrics`.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The service's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by method and gRPC status.
    pub requests: IntCounterVec,
    /// Queries per executed batch.
    pub batch_size: HistogramVec,
    /// Seconds a search waited in the queue before its batch ran.
    pub queue_wait: HistogramVec,
    /// Seconds a batch took to execute.
    pub batch_exec: HistogramVec,
    /// Live vectors per collection.
    pub vectors: IntGaugeVec,
    /// Searches waiting per collection.
    pub queue_depth: IntGaugeVec,
    /// Requests refused by a rate limit, by limit (`requests`, `vectors`).
    pub rate_limited: IntCounterVec,
    /// Cluster mode: the last op each shard replica held here has applied.
    pub cluster_applied: IntGaugeVec,
    /// Cluster mode: ops each shard replica held here is behind the end of its shard's log.
    pub cluster_lag: IntGaugeVec,
    /// Cluster mode: replica requests this node routed, by shard and the node that answered.
    pub cluster_routed: IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "quiver_requests_total",
                "gRPC requests by method and status",
            ),
            &["method", "status"],
        )
        .expect("valid metric");
        let secs = exponential_buckets(0.000_05, 2.0, 18).expect("valid buckets");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("quiver_batch_size", "queries per executed search batch")
                .buckets(exponential_buckets(1.0, 2.0, 13).expect("valid buckets")),
            &["collection"],
        )
        .expect("valid metric");
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "quiver_queue_wait_seconds",
                "time a search waited before its batch ran",
            )
            .buckets(secs.clone()),
            &["collection"],
        )
        .expect("valid metric");
        let batch_exec = HistogramVec::new(
            HistogramOpts::new(
                "quiver_batch_exec_seconds",
                "time to execute one search batch",
            )
            .buckets(secs),
            &["collection"],
        )
        .expect("valid metric");
        let vectors = IntGaugeVec::new(
            Opts::new("quiver_vectors", "live vectors per collection"),
            &["collection"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("quiver_queue_depth", "searches waiting per collection"),
            &["collection"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "quiver_rate_limited_total",
                "requests refused by a per-client rate limit, by limit",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let cluster_applied = IntGaugeVec::new(
            Opts::new(
                "quiver_cluster_applied_seq",
                "cluster mode: the last op of its shard's log each replica held here has applied",
            ),
            &["collection", "shard"],
        )
        .expect("valid metric");
        let cluster_lag = IntGaugeVec::new(
            Opts::new(
                "quiver_cluster_replication_lag",
                "cluster mode: ops each replica held here is behind the end of its shard's log",
            ),
            &["collection", "shard"],
        )
        .expect("valid metric");
        let cluster_routed = IntCounterVec::new(
            Opts::new(
                "quiver_cluster_routed_total",
                "cluster mode: replica requests this node sent, by shard and answering node",
            ),
            &["collection", "shard", "node"],
        )
        .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batch_size.clone()),
            Box::new(queue_wait.clone()),
            Box::new(batch_exec.clone()),
            Box::new(vectors.clone()),
            Box::new(queue_depth.clone()),
            Box::new(rate_limited.clone()),
            Box::new(cluster_applied.clone()),
            Box::new(cluster_lag.clone()),
            Box::new(cluster_routed.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Metrics {
            registry,
            requests,
            batch_size,
            queue_wait,
            batch_exec,
            vectors,
            queue_depth,
            rate_limited,
            cluster_applied,
            cluster_lag,
            cluster_routed,
        }
    }

    /// Counts one finished request.
    pub fn request(&self, method: &str, code: tonic::Code) {
        self.requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Serves `/metrics` on `addr` until `shutdown` resolves; with `keys`, only to requests
    /// carrying one of them (read-only suffices) as `api-key` or `authorization: Bearer`,
    /// others get 401.
    pub async fn serve<L>(
        self,
        listener: L,
        keys: Option<std::sync::Arc<crate::auth::ApiKeys>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()>
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        use axum::http::{header, HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| {
                let m = self.clone();
                let keys = keys.clone();
                async move {
                    let Some(keys) = keys else {
                        return m.render().into_response();
                    };
                    let grant = crate::auth::presented_key(&headers).and_then(|p| keys.identify(p));
                    match grant {
                        Some(g) if g.scope.is_none() => m.render().into_response(),
                        // The metrics name every collection: a key held to some may not see them.
                        Some(_) => (
                            StatusCode::FORBIDDEN,
                            "the metrics need an API key without a collection scope\n",
                        )
                            .into_response(),
                        None => (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "an API key is required: send it as `api-key: KEY` or `authorization: Bearer KEY`\n",
                        )
                            .into_response(),
                    }
                }
            }),
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
