//! A few named files in one fuzz input: records of `[name length: u8][name][data length: u32
//! little-endian][data]`, read until the input ends (a truncated record ends it early). Names
//! that are not plain file names (empty, `.`/`..`, a `/`, a NUL) are skipped, so no input can
//! write outside the folder it is unpacked into.

use std::path::Path;

/// The files of an input, in order (a later record of the same name replaces an earlier one
/// when unpacked).
pub fn parse(mut data: &[u8]) -> Vec<(String, &[u8])> {
    let mut files = Vec::new();
    while let Some((&n, rest)) = data.split_first() {
        let n = n as usize;
        if rest.len() < n + 4 {
            break;
        }
        let name = String::from_utf8_lossy(&rest[..n]).into_owned();
        let len = u32::from_le_bytes(rest[n..n + 4].try_into().unwrap()) as usize;
        let body = &rest[n + 4..];
        let take = len.min(body.len());
        files.push((name, &body[..take]));
        data = &body[take..];
    }
    files
}

/// Whether `name` is a path relative to a folder that stays inside it: one or two plain
/// components (`wal/00001.log`), none of them `.` or `..`.
pub fn safe_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0'))
}

/// Writes an input's files under `dir` (created), skipping unsafe names.
pub fn unpack(data: &[u8], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, body) in parse(data) {
        if !safe_name(&name) {
            continue;
        }
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // A name that is already a folder (`wal`) cannot also be a file: skip it.
        if path.is_dir() {
            continue;
        }
        std::fs::write(&path, body)?;
    }
    Ok(())
}

/// Packs files (name relative to a folder, contents) into one input.
pub fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, body) in files {
        assert!(
            name.len() <= 255 && safe_name(name),
            "bad archive name {name}"
        );
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// Packs every file under `dir` (at most one folder deep), in name order.
pub fn pack_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut files = Vec::new();
    let mut walk = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = walk.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type()?.is_dir() {
                walk.push((e.path(), format!("{name}/")));
            } else {
                files.push((name, std::fs::read(e.path())?));
            }
        }
    }
    files.sort();
    Ok(pack(&files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_names() {
        let files = vec![
            ("manifest.json".to_string(), b"{}".to_vec()),
            ("wal/00001.log".to_string(), vec![1, 2, 3]),
        ];
        let packed = pack(&files);
        let parsed = parse(&packed);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1], ("wal/00001.log".to_string(), &[1u8, 2, 3][..]));
        // Truncated: the last record keeps what is there.
        assert_eq!(parse(&packed[..packed.len() - 1])[1].1, &[1u8, 2]);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a/b/c",
            "a//b",
        ] {
            assert!(!safe_name(bad), "{bad}");
        }
        let dir = std::env::temp_dir().join(format!("quiver-fuzz-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        unpack(&pack_raw(&[("../escape", b"x"), ("ok", b"y")]), &dir).unwrap();
        assert!(dir.join("ok").exists());
        assert!(!dir.parent().unwrap().join("escape").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Packs without the name check (as a fuzzer may write).
    fn pack_raw(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, body) in files {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(body);
        }
        out
    }
}
