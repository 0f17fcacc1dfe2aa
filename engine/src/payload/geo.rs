//! Geo conditions on payload points (`{"lon": …, "lat": …}`), as Qdrant defines them: within a
//! radius (haversine distance on a sphere of the mean Earth radius), inside a bounding box
//! (strictly; a box whose left edge is east of its right edge crosses the antimeridian), or
//! inside a polygon (ray casting; a point on the exterior's boundary is inside, on a hole's
//! boundary outside).

use serde_json::Value;

/// The mean Earth radius in metres (IUGG).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A point: longitude and latitude in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    /// Longitude.
    pub lon: f64,
    /// Latitude.
    pub lat: f64,
}

impl GeoPoint {
    /// A payload value that is a geo point: an object with finite numbers `lon` and `lat`.
    pub fn of(v: &Value) -> Option<GeoPoint> {
        let o = v.as_object()?;
        let lon = o.get("lon")?.as_f64().filter(|x| x.is_finite())?;
        let lat = o.get("lat")?.as_f64().filter(|x| x.is_finite())?;
        Some(GeoPoint { lon, lat })
    }
}

/// A geo condition.
#[derive(Debug, Clone, PartialEq)]
pub enum GeoShape {
    /// Closer than `radius` metres to `center`.
    Radius {
        /// The centre.
        center: GeoPoint,
        /// Metres.
        radius: f64,
    },
    /// Strictly inside the box.
    Box {
        /// North-west corner.
        top_left: GeoPoint,
        /// South-east corner.
        bottom_right: GeoPoint,
    },
    /// Inside the exterior ring and outside every hole.
    Polygon {
        /// The exterior ring.
        exterior: Vec<GeoPoint>,
        /// Holes.
        interiors: Vec<Vec<GeoPoint>>,
    },
}

/// Haversine distance in metres.
pub fn distance(a: GeoPoint, b: GeoPoint) -> f64 {
    let (lon1, lat1, lon2, lat2) = (
        a.lon.to_radians(),
        a.lat.to_radians(),
        b.lon.to_radians(),
        b.lat.to_radians(),
    );
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    EARTH_RADIUS_M * 2.0 * h.sqrt().asin()
}

impl GeoShape {
    /// True when `p` satisfies the condition.
    pub fn contains(&self, p: GeoPoint) -> bool {
        match self {
            GeoShape::Radius { center, radius } => distance(p, *center) < *radius,
            GeoShape::Box {
                top_left,
                bottom_right,
            } => {
                let lon_ok = if top_left.lon > bottom_right.lon {
                    p.lon > top_left.lon || p.lon < bottom_right.lon
                } else {
                    top_left.lon < p.lon && p.lon < bottom_right.lon
                };
                lon_ok && top_left.lat > p.lat && p.lat > bottom_right.lat
            }
            GeoShape::Polygon {
                exterior,
                interiors,
            } => in_ring(p, exterior, true) && !interiors.iter().any(|h| in_ring(p, h, false)),
        }
    }
}

/// Ray casting over (lat, lon) pairs; a point on the boundary is `on_boundary_inside`.
fn in_ring(p: GeoPoint, ring: &[GeoPoint], on_boundary_inside: bool) -> bool {
    let mut ring = ring;
    if ring.len() > 1 && ring[0] == ring[ring.len() - 1] {
        ring = &ring[..ring.len() - 1];
    }
    if ring.is_empty() {
        return false;
    }
    let (px, py) = (p.lat, p.lon);
    let mut inside = false;
    let mut j = ring.len() - 1;
    for i in 0..ring.len() {
        let (xi, yi) = (ring[i].lat, ring[i].lon);
        let (xj, yj) = (ring[j].lat, ring[j].lon);
        let on_boundary = py * (xi - xj) + yi * (xj - px) + yj * (px - xi) == 0.0
            && (xi - px) * (xj - px) <= 0.0
            && (yi - py) * (yj - py) <= 0.0;
        if on_boundary {
            return on_boundary_inside;
        }
        if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(lon: f64, lat: f64) -> GeoPoint {
        GeoPoint { lon, lat }
    }

    #[test]
    fn radius_box_and_polygon() {
        let moscow = pt(37.6173, 55.7558);
        let london = pt(-0.1278, 51.5074);
        let d = distance(moscow, london);
        assert!(d > 2_400_000.0 && d < 2_600_000.0, "{d}");
        let r = GeoShape::Radius {
            center: london,
            radius: 10_000.0,
        };
        assert!(r.contains(pt(-0.1, 51.5)) && !r.contains(moscow));
        let b = GeoShape::Box {
            top_left: pt(-1.0, 52.0),
            bottom_right: pt(1.0, 51.0),
        };
        assert!(b.contains(london) && !b.contains(moscow) && !b.contains(pt(1.0, 51.5)));
        // Across the antimeridian.
        let b = GeoShape::Box {
            top_left: pt(170.0, 10.0),
            bottom_right: pt(-170.0, -10.0),
        };
        assert!(
            b.contains(pt(179.0, 0.0)) && b.contains(pt(-179.0, 0.0)) && !b.contains(pt(0.0, 0.0))
        );
        let square = vec![
            pt(0.0, 0.0),
            pt(10.0, 0.0),
            pt(10.0, 10.0),
            pt(0.0, 10.0),
            pt(0.0, 0.0),
        ];
        let hole = vec![pt(4.0, 4.0), pt(6.0, 4.0), pt(6.0, 6.0), pt(4.0, 6.0)];
        let p = GeoShape::Polygon {
            exterior: square,
            interiors: vec![hole],
        };
        assert!(p.contains(pt(1.0, 1.0)));
        assert!(!p.contains(pt(5.0, 5.0)));
        assert!(!p.contains(pt(11.0, 5.0)));
        // On the exterior's edge: inside; on a hole's edge: not in the hole.
        assert!(p.contains(pt(0.0, 5.0)));
        assert!(p.contains(pt(4.0, 5.0)));
        assert_eq!(
            GeoPoint::of(&serde_json::json!({"lon": 1, "lat": 2.5})),
            Some(pt(1.0, 2.5))
        );
        assert_eq!(
            GeoPoint::of(&serde_json::json!({"lon": "1", "lat": 2})),
            None
        );
    }
}
