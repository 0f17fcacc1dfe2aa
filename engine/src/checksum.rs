//! The CRC32C check every file format of Quiver ends its records and sections with.
//!
//! In fuzz builds (`--cfg fuzzing`, set by scripts/fuzz for Quiver's own crates only) a stored
//! checksum is taken as right whatever it holds: a fuzzer cannot recompute checksums, and
//! without this nearly every mutated file would stop at the first one, never reaching the
//! parsing behind it. Normal builds compare.

/// Whether `bytes` carry the stored checksum `stored`.
#[inline]
pub fn crc32c_matches(bytes: &[u8], stored: u32) -> bool {
    accepts(crc32c::crc32c(bytes), stored)
}

/// Whether a computed checksum `actual` accepts the stored `stored`.
#[inline]
pub fn accepts(actual: u32, stored: u32) -> bool {
    actual == stored || cfg!(fuzzing)
}

#[cfg(test)]
mod tests {
    #[test]
    fn compares_outside_fuzz_builds() {
        let c = crc32c::crc32c(b"quiver");
        assert!(super::crc32c_matches(b"quiver", c));
        assert!(!super::crc32c_matches(b"quiveR", c));
    }
}
