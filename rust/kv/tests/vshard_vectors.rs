//! Rust's key → vShard agrees with the Cython kernel's on the keys of
//! `fixtures/vshard_vectors.json` (empty, binary, every length class of XXH3, random), which
//! that kernel wrote (`nodedb_cluster.routing.vshard_for_key`); a pytest checks the Cython side
//! against the same file.

use nodedb_kv::routing::{vshard_of, VSHARDS};

const FIXTURE: &str = include_str!("fixtures/vshard_vectors.json");

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `(key, vshard)` of each `{"key_hex": "...", "vshard": n}` line (the fixture's fixed layout).
fn vectors() -> Vec<(Vec<u8>, usize)> {
    FIXTURE
        .lines()
        .filter_map(|line| {
            let key = line.split("\"key_hex\": \"").nth(1)?.split('"').next()?;
            let vshard = line
                .split("\"vshard\": ")
                .nth(1)?
                .trim_end_matches([',', '}']);
            Some((hex(key), vshard.trim().parse().expect("vshard")))
        })
        .collect()
}

#[test]
fn rust_agrees_with_the_cython_kernel() {
    let vectors = vectors();
    assert!(
        vectors.len() >= 200,
        "fixture read: {} vectors",
        vectors.len()
    );
    assert!(vectors.iter().any(|(k, _)| k.is_empty()), "the empty key");
    for (key, vshard) in vectors {
        assert!(vshard < VSHARDS);
        assert_eq!(vshard_of(&key), vshard, "key {key:02x?}");
    }
}
