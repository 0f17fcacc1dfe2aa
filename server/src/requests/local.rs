//! The requests served from this server's own collections (the registry): writes on the
//! write pool's threads within the write budget, searches through the collection's
//! micro-batcher, reads on blocking threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use quiver_engine::backend::Neighbors;
use quiver_engine::payload::fields::FieldSpec;
use quiver_store::segment::resolve;
use quiver_store::SearchKey;
use tokio::sync::oneshot;
use tonic::Status;

use super::{
    check_queries, check_upsert_shape, Caller, CollectionState, CollectionStatus, Count,
    CreateCollection, Delete, DeleteTarget, EditPayload, Get, Hit, Probes, QueryFilters, Router,
    Scroll, ScrollPage, Search, SettingsEdit, StoredPoint, Train, Upsert,
};
use crate::admission::PreAdmitted;
use crate::batcher::Job;
use crate::collection::Collection;
use crate::payloads::{parse_filter, query_filters};
use crate::registry::Registry;
use crate::status::{from_store, invalid};

/// The local side of the [`Router`].
pub(super) struct Local<'a> {
    registry: &'a Arc<Registry>,
}

/// Runs `f` on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

/// The state of a served collection.
pub(crate) fn state_of(name: &str, c: &Collection) -> CollectionState {
    let meta = c.store.meta();
    let seg = c.store.version();
    let status = match c.store.job() {
        quiver_store::collection::JobState::Ready => CollectionStatus::Ready,
        quiver_store::collection::JobState::Training => CollectionStatus::Training,
        quiver_store::collection::JobState::Failed(why) => CollectionStatus::Failed(why),
    };
    CollectionState {
        name: name.to_string(),
        status,
        count: seg.len() as u64,
        trained: seg.quantizers.is_some(),
        index: meta.index.clone(),
        memory_bytes: seg.data_bytes() as u64,
        segments: seg.segments.len() as u32 + 1,
        drift: c.store.drift().ratio().unwrap_or(0.0),
        read_only: c.store.is_read_only(),
        shards: 1,
        replication: 1,
        meta: Some(meta),
    }
}

impl<'a> Local<'a> {
    pub(super) fn new(registry: &'a Arc<Registry>) -> Self {
        Local { registry }
    }

    fn limits(&self) -> &crate::config::Limits {
        &self.registry.config().limits
    }

    /// Sets the collection's vector-count gauge after a write.
    fn count_vectors(&self, name: &str, c: &Collection) {
        self.registry
            .metrics()
            .vectors
            .with_label_values(&[name])
            .set(c.store.version().len() as i64);
    }

    pub(super) async fn create(&self, r: CreateCollection) -> Result<CollectionState, Status> {
        if r.shards > 1 || r.replication > 1 {
            return Err(invalid(
                if r.shards > 1 {
                    "shard_number"
                } else {
                    "replication_factor"
                },
                "a single server holds 1 shard of 1 replica: start it in cluster mode (serve --nats) for more",
            ));
        }
        let name = r.meta.name.clone();
        let registry = self.registry.clone();
        let c = blocking(move || registry.create(r.meta)).await?;
        Ok(state_of(&name, &c))
    }

    pub(super) fn describe(&self, name: &str) -> Result<CollectionState, Status> {
        if self.registry.is_loading(name) {
            return Ok(CollectionState::unopened(name, CollectionStatus::Loading));
        }
        self.registry.get(name).map(|c| state_of(name, &c))
    }

    pub(super) fn list(&self) -> Vec<CollectionState> {
        let mut all: Vec<CollectionState> = self
            .registry
            .list()
            .iter()
            .map(|(n, c)| state_of(n, c))
            .collect();
        all.extend(
            self.registry
                .failed()
                .into_iter()
                .map(|(n, why)| CollectionState::unopened(&n, CollectionStatus::Failed(why))),
        );
        all.extend(
            self.registry
                .loading()
                .into_iter()
                .map(|n| CollectionState::unopened(&n, CollectionStatus::Loading)),
        );
        all
    }

    pub(super) async fn update_settings(
        &self,
        name: &str,
        edit: SettingsEdit,
    ) -> Result<(), Status> {
        let store = self.registry.get(name)?.store.clone();
        self.registry
            .writes()
            .run(move || {
                store
                    .update_settings(|settings, at| edit(settings, at))
                    .map_err(from_store)
            })
            .await
    }

    pub(super) async fn create_field_index(
        &self,
        name: &str,
        spec: FieldSpec,
    ) -> Result<CollectionState, Status> {
        let c = self.registry.get(name)?;
        let store = c.store.clone();
        blocking(move || store.create_field_index(spec).map_err(from_store)).await?;
        Ok(state_of(name, &c))
    }

    pub(super) async fn delete_field_index(
        &self,
        name: &str,
        key: &str,
    ) -> Result<CollectionState, Status> {
        let c = self.registry.get(name)?;
        let store = c.store.clone();
        let key = key.to_string();
        blocking(move || store.delete_field_index(&key).map_err(from_store)).await?;
        Ok(state_of(name, &c))
    }

    pub(super) async fn upsert(
        &self,
        r: Upsert,
        caller: &Caller,
        admitted: Option<PreAdmitted>,
        router: &Router,
    ) -> Result<u64, Status> {
        let c = self.registry.get(&r.collection)?;
        let meta = c.store.meta();
        check_upsert_shape(&r, meta.dim, meta.metric(), self.limits().max_upsert_points)?;
        let bytes = (r.ids.len() * 8
            + r.vectors.len() * 4
            + r.payloads.iter().map(Vec::len).sum::<usize>()) as u64;
        let share = match admitted.and_then(|a| a.take()) {
            Some(share) => share,
            None => self.registry.write_budget().take(bytes)?,
        };
        // Rate tokens only for a write that will run (a refused one spends none).
        router.take_vectors(caller.client, r.ids.len())?;
        let store = c.store.clone();
        let n = self
            .registry
            .writes()
            .run(move || {
                // Held until the write ends, even when the client gave up before.
                let _share = share;
                store
                    .upsert_with_mode(r.ids, r.vectors, r.payloads, r.mode)
                    .map_err(from_store)
            })
            .await? as u64;
        self.count_vectors(&meta.name, &c);
        Ok(n)
    }

    pub(super) async fn delete(&self, r: Delete) -> Result<u64, Status> {
        let c = self.registry.get(&r.collection)?;
        match &r.target {
            DeleteTarget::Filter(f) => {
                parse_filter("filter", f, &c.store.field_specs())?;
            }
            DeleteTarget::Ids(ids) if ids.is_empty() => {
                return Err(invalid(
                    "ids",
                    "empty: at least one id (or a filter) is required",
                ))
            }
            DeleteTarget::Ids(_) => {}
        }
        let store = c.store.clone();
        let deleted = self
            .registry
            .writes()
            .run(move || match r.target {
                DeleteTarget::Filter(f) => store.delete_filter(&f).map_err(from_store),
                DeleteTarget::Ids(ids) => store.delete(ids).map_err(from_store),
            })
            .await?;
        self.count_vectors(&r.collection, &c);
        Ok(deleted as u64)
    }

    pub(super) async fn edit_payload(&self, r: EditPayload) -> Result<u64, Status> {
        let store = self.registry.get(&r.collection)?.store.clone();
        let updated = self
            .registry
            .writes()
            .run(move || store.set_payload(r.ids, r.edit).map_err(from_store))
            .await?;
        Ok(updated as u64)
    }

    pub(super) async fn get(&self, r: Get) -> Result<Vec<StoredPoint>, Status> {
        let store = self.registry.get(&r.collection)?.store.clone();
        blocking(move || {
            Ok(store
                .get_points(&r.ids)
                .into_iter()
                .map(|(id, vector, payload)| StoredPoint {
                    id,
                    vector: if r.with_vectors { vector } else { Vec::new() },
                    payload,
                })
                .collect())
        })
        .await
    }

    pub(super) async fn scroll(&self, r: Scroll) -> Result<ScrollPage, Status> {
        let c = self.registry.get(&r.collection)?;
        let filter = parse_filter("filter", &r.filter, &c.store.field_specs())?;
        let store = c.store.clone();
        blocking(move || {
            let (page, next) = store.scroll(filter.as_ref(), r.from, r.limit);
            let mut vectors: HashMap<u64, Vec<f32>> = if r.with_vectors {
                let ids: Vec<u64> = page.iter().map(|(id, _)| *id).collect();
                store.get(&ids).into_iter().collect()
            } else {
                HashMap::new()
            };
            let points = page
                .into_iter()
                .map(|(id, payload)| StoredPoint {
                    id,
                    vector: vectors.remove(&id).unwrap_or_default(),
                    payload,
                })
                .collect();
            Ok(ScrollPage { points, next })
        })
        .await
    }

    pub(super) async fn count(&self, r: Count) -> Result<u64, Status> {
        let c = self.registry.get(&r.collection)?;
        let filter = parse_filter("filter", &r.filter, &c.store.field_specs())?;
        let store = c.store.clone();
        blocking(move || Ok(store.count(filter.as_ref()) as u64)).await
    }

    pub(super) async fn sparse_search(&self, r: super::SparseSearch) -> Result<Vec<Hit>, Status> {
        let c = self.registry.get(&r.collection)?;
        let filter = parse_filter("filter", &r.filter, &c.store.field_specs())?;
        let store = c.store.clone();
        blocking(move || {
            Ok(store
                .search_sparse(&r.name, &r.query, r.k, filter.as_ref(), r.idf)
                .into_iter()
                .map(|(id, score)| Hit {
                    id,
                    distance: -score,
                    payload: Vec::new(),
                })
                .collect())
        })
        .await
    }

    pub(super) async fn space_search(&self, r: super::SpaceSearch) -> Result<Vec<Hit>, Status> {
        let c = self.registry.get(&r.collection)?;
        let filter = parse_filter("filter", &r.filter, &c.store.field_specs())?;
        if r.multi {
            let rows: Vec<Vec<f32>> = r.query.chunks(r.dim.max(1)).map(<[f32]>::to_vec).collect();
            let query = crate::qdrant::vectors::prepare_multi(r.metric, r.dim, &rows)
                .map_err(|e| crate::status::invalid("vector", e))?;
            let store = c.store.clone();
            return blocking(move || {
                Ok(store
                    .search_multi(&r.name, r.metric, r.dim, &query, r.k, filter.as_ref())
                    .into_iter()
                    .map(|(id, score)| Hit {
                        id,
                        distance: -score,
                        payload: Vec::new(),
                    })
                    .collect())
            })
            .await;
        }
        let query = quiver_engine::dense_set::prepare(r.metric, r.dim, &r.query)
            .map_err(|e| crate::status::invalid("vector", e.to_string()))?;
        let store = c.store.clone();
        blocking(move || {
            let n = store
                .search_dense(&r.name, r.metric, r.dim, &query, r.k, filter.as_ref())
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(hits_of(&n, 0))
        })
        .await
    }

    pub(super) async fn example_search(
        &self,
        r: super::ExampleSearch,
    ) -> Result<Vec<(u64, f32)>, Status> {
        use quiver_engine::example_query::DenseExamples;
        use quiver_store::collection::Examples;
        let c = self.registry.get(&r.collection)?;
        let filter = parse_filter("filter", &r.filter, &c.store.field_specs())?;
        let dense = |metric, dim, examples: &[Vec<f32>]| {
            DenseExamples::new(r.scoring, metric, dim, examples)
                .map_err(|e| invalid("query", e.to_string()))
        };
        let examples = match (r.space, &r.examples) {
            (super::ExampleSpace::Own, super::ExampleVectors::Dense(v)) => {
                let meta = c.store.meta();
                Examples::Own(dense(meta.metric(), meta.dim, v)?)
            }
            (
                super::ExampleSpace::Named {
                    name,
                    metric,
                    dim,
                    multi: false,
                },
                super::ExampleVectors::Dense(v),
            ) => Examples::Named {
                name,
                metric,
                query: dense(metric, dim, v)?,
            },
            (
                super::ExampleSpace::Named {
                    name,
                    metric,
                    dim,
                    multi: true,
                },
                super::ExampleVectors::Multi(v),
            ) => Examples::Named {
                name,
                metric,
                query: DenseExamples::new_multi(r.scoring, metric, dim, v)
                    .map_err(|e| invalid("query", e.to_string()))?,
            },
            (super::ExampleSpace::Sparse { name, idf }, super::ExampleVectors::Sparse(v)) => {
                r.scoring
                    .check()
                    .map_err(|e| invalid("query", e.to_string()))?;
                Examples::Sparse {
                    name,
                    idf,
                    scoring: r.scoring,
                    examples: v.clone(),
                }
            }
            (super::ExampleSpace::Sparse { .. }, _) => {
                return Err(invalid("query", "dense examples for sparse vectors"))
            }
            (_, _) => return Err(invalid("query", "sparse examples for dense vectors")),
        };
        let store = c.store.clone();
        let k = r.k;
        blocking(move || {
            store
                .search_examples(&examples, k, filter.as_ref())
                .map_err(from_store)
        })
        .await
    }

    pub(super) async fn search(
        &self,
        r: Search,
        caller: &Caller,
        router: &Router,
    ) -> Result<Vec<Vec<Hit>>, Status> {
        let c = self.registry.get(&r.collection)?;
        let meta = c.store.meta();
        let nq = check_queries(&r, meta.dim, meta.metric(), self.limits())?;
        let (one, per_query): (&str, &[String]) = match &r.filters {
            QueryFilters::One(f) => (f, &[]),
            QueryFilters::PerQuery(f) => ("", f),
        };
        let filters = query_filters(one, per_query, nq, &meta.fields)?;
        let nlist = c.store.version().quantizers.as_ref().map(|q| q.nlist());
        let nprobe = match (r.probes, nlist) {
            (Probes::Default, _) => 0,
            (Probes::Lists(n), _) => n,
            (Probes::AtMost(n), Some(nlist)) => n.min(nlist),
            (Probes::All, Some(nlist)) => nlist,
            (Probes::AtMost(_) | Probes::All, None) => 0,
        };
        let key = SearchKey {
            k: r.k,
            nprobe,
            refine_factor: r.refine_factor,
        };
        check_key(&c, key, nq, self.limits())?;
        router.take_vectors(caller.client, nq)?;
        let (tx, rx) = oneshot::channel();
        c.submit(Job {
            queries: r.queries,
            nq,
            key,
            enqueued: Instant::now(),
            deadline: caller.deadline,
            reply: tx,
            filters: filters.0,
            of_query: filters.1,
        })?;
        let answer = match caller.deadline {
            Some(d) => tokio::time::timeout_at(d.into(), rx).await.map_err(|_| {
                Status::deadline_exceeded("deadline passed before the search finished")
            })?,
            None => rx.await,
        };
        let n =
            answer.map_err(|_| Status::unavailable("the search was dropped during shutdown"))??;
        let mut hits: Vec<Vec<Hit>> = (0..n.len()).map(|q| hits_of(&n, q)).collect();
        if r.with_payload {
            let v = c.store.version();
            for h in hits.iter_mut().flatten() {
                h.payload = v.payload(h.id).unwrap_or_default().to_vec();
            }
        }
        Ok(hits)
    }

    pub(super) async fn train(&self, r: Train) -> Result<CollectionState, Status> {
        let c = self.registry.get(&r.collection)?;
        c.store.start_train(r.overrides).map_err(from_store)?;
        if !r.background {
            let store = c.store.clone();
            blocking(move || store.wait_job().map_err(from_store)).await?;
        }
        Ok(state_of(&r.collection, &c))
    }
}

/// Query `q`'s neighbours (the padding of a short answer left out).
fn hits_of(n: &Neighbors, q: usize) -> Vec<Hit> {
    n.ids_of(q)
        .iter()
        .zip(n.distances_of(q))
        .filter(|(id, _)| **id >= 0)
        .map(|(&id, &distance)| Hit {
            id: id as u64,
            distance,
            payload: Vec::new(),
        })
        .collect()
}

/// Refuses a search whose parameters do not fit the collection, or whose working memory
/// would pass the server's limit per request.
fn check_key(
    c: &Collection,
    key: SearchKey,
    nq: usize,
    limits: &crate::config::Limits,
) -> Result<(), Status> {
    let v = c.store.version();
    let meta = c.store.meta();
    let segments = v.all().filter(|s| !s.is_empty()).count().max(1) as u64;
    let (nq64, k) = (nq as u64, key.k as u64);
    // Working memory: each segment's candidates (slot, score) and results, the merge, the
    // queries, and (IVF) one tile's lookup tables.
    let estimate = match &v.quantizers {
        Some(q) => {
            let nlist = q.nlist();
            if key.nprobe > nlist {
                return Err(invalid(
                    "nprobe",
                    format!(
                        "{} is out of range: it must be between 1 and nlist = {nlist} (0 = default)",
                        key.nprobe
                    ),
                ));
            }
            let params = resolve(c.store.with_default_refine(key), nlist, q.params().refine);
            params.validate(q).map_err(|e| invalid("refine_factor", e))?;
            let candidates = k.saturating_mul(params.refine_factor as u64);
            let tables = nq64.min(1024) * (q.pq().m() * q.pq().ksub() * 4) as u64;
            nq64.saturating_mul(candidates.saturating_mul(16))
                .saturating_add(tables)
                .saturating_add(nq64 * k * 12 * (segments + 1))
        }
        None => nq64 * k * 12 * (segments + 1),
    }
    .saturating_add(nq64 * meta.dim as u64 * 8);
    if estimate > limits.max_request_bytes {
        return Err(from_store(quiver_store::StoreError::TooLarge {
            estimate,
            limit: limits.max_request_bytes,
        }));
    }
    Ok(())
}
