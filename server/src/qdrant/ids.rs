//! Point ids of the Qdrant API on Quiver's ids (unsigned integers below 2^63).
//!
//! - An integer id below 2^62 is itself.
//! - A UUID maps to an id in [2^62, 2^63) folded from its 128 bits, and is kept in the point's
//!   payload under the reserved key [`UUID_KEY`], written in the same logged upsert as the
//!   point: the map is as durable as the point, and an id found by a search or a scroll gives
//!   its UUID back. Two UUIDs folding onto one id (about one chance in 10^7 among 10^6 UUIDs)
//!   are refused at upsert, never merged. The reserved key is hidden from every payload the
//!   API returns and cannot be written by clients.

use serde_json::Value;
use tonic::Status;
use uuid::Uuid;

use crate::status::invalid;

/// Payload key holding a UUID point's UUID.
pub const UUID_KEY: &str = "__quiver_uuid";
/// First internal id of the UUID range; integer ids must be below it.
pub const UUID_BASE: u64 = 1 << 62;

/// A point id as a Qdrant client gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PointKey {
    /// An unsigned integer.
    Num(u64),
    /// A UUID.
    Uuid(Uuid),
}

impl PointKey {
    /// An integer id, checked to be below [`UUID_BASE`].
    pub fn num(field: &str, n: u64) -> Result<Self, Status> {
        if n >= UUID_BASE {
            return Err(invalid(
                field,
                format!("integer id {n} is out of range: Quiver takes integer ids below 2^62 (use a UUID)"),
            ));
        }
        Ok(PointKey::Num(n))
    }

    /// A UUID id from its text (any form the uuid crate reads: hyphenated, simple, urn).
    pub fn uuid(field: &str, text: &str) -> Result<Self, Status> {
        Uuid::parse_str(text)
            .map(PointKey::Uuid)
            .map_err(|e| invalid(field, format!("`{text}` is not a UUID: {e}")))
    }

    /// An id in JSON: an unsigned integer or a UUID string.
    pub fn from_json(field: &str, v: &Value) -> Result<Self, Status> {
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(n) => PointKey::num(field, n),
                None => Err(invalid(
                    field,
                    format!("{n} is not a valid id: ids are unsigned integers or UUIDs"),
                )),
            },
            Value::String(s) => PointKey::uuid(field, s),
            other => Err(invalid(
                field,
                format!(
                    "expected an unsigned integer or a UUID string, got {}",
                    quiver_engine::payload::type_name(other)
                ),
            )),
        }
    }

    /// The id in JSON.
    pub fn to_json(self) -> Value {
        match self {
            PointKey::Num(n) => Value::from(n),
            PointKey::Uuid(u) => Value::String(u.hyphenated().to_string()),
        }
    }

    /// Quiver's id of the point.
    pub fn internal(self) -> u64 {
        match self {
            PointKey::Num(n) => n,
            PointKey::Uuid(u) => {
                let (hi, lo) = u.as_u64_pair();
                UUID_BASE | ((hi ^ lo.rotate_left(29)) & (UUID_BASE - 1))
            }
        }
    }

    /// The UUID, for a UUID id.
    pub fn as_uuid(self) -> Option<Uuid> {
        match self {
            PointKey::Uuid(u) => Some(u),
            PointKey::Num(_) => None,
        }
    }
}

/// The key of a stored point from its internal id and payload object: `None` for an id in the
/// UUID range whose payload holds no valid UUID (not written through this API).
pub fn key_of(internal: u64, payload: Option<&serde_json::Map<String, Value>>) -> Option<PointKey> {
    if internal < UUID_BASE {
        return Some(PointKey::Num(internal));
    }
    let text = payload?.get(UUID_KEY)?.as_str()?;
    let u = Uuid::parse_str(text).ok()?;
    (PointKey::Uuid(u).internal() == internal).then_some(PointKey::Uuid(u))
}

/// The key of a stored point from its stored payload bytes (compact JSON, empty: none).
pub fn key_of_stored(internal: u64, stored: &[u8]) -> Option<PointKey> {
    if internal < UUID_BASE {
        return Some(PointKey::Num(internal));
    }
    let map: serde_json::Map<String, Value> = serde_json::from_slice(stored).ok()?;
    key_of(internal, Some(&map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_themselves_and_uuids_fold_into_the_upper_range() {
        assert_eq!(PointKey::num("id", 7).unwrap().internal(), 7);
        assert!(PointKey::num("id", UUID_BASE).is_err());
        let k = PointKey::uuid("id", "5c56c793-69f3-4fbf-87e6-c4bf54c28c26").unwrap();
        let id = k.internal();
        assert!((UUID_BASE..1 << 63).contains(&id));
        let payload = serde_json::json!({ UUID_KEY: "5c56c793-69f3-4fbf-87e6-c4bf54c28c26" });
        assert_eq!(key_of(id, payload.as_object()), Some(k));
        // A payload naming another UUID does not give this id back.
        let other = serde_json::json!({ UUID_KEY: "00000000-0000-0000-0000-000000000001" });
        assert_eq!(key_of(id, other.as_object()), None);
        assert_eq!(key_of(id, None), None);
    }

    #[test]
    fn ids_in_json() {
        assert_eq!(
            PointKey::from_json("id", &serde_json::json!(3)).unwrap(),
            PointKey::Num(3)
        );
        let u = PointKey::from_json("id", &serde_json::json!("5C56C79369F34FBF87E6C4BF54C28C26"))
            .unwrap();
        assert_eq!(
            u.to_json(),
            serde_json::json!("5c56c793-69f3-4fbf-87e6-c4bf54c28c26")
        );
        for bad in [
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!("x"),
            serde_json::json!(null),
        ] {
            let e = PointKey::from_json("points[0].id", &bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("points[0].id"), "{}", e.message());
        }
    }
}
