//! The hostile archive corpus: each archive a careless or malicious producer
//! might upload as an input or a cache, with what must become of it. After each,
//! nothing outside the target folder was written and no link inside leads out.

use std::io::Write;
use std::path::Path;

use super::reader::tests::{checksum, padded, pax_record, raw_header};
use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Unpacked,
    Escape,
    Special,
    Limit,
    Malformed,
}

fn outcome(result: &Result<Unpacked, Unpack>) -> Expect {
    match result {
        Ok(_) => Expect::Unpacked,
        Err(Unpack::Escape(_)) => Expect::Escape,
        Err(Unpack::Special(_)) => Expect::Special,
        Err(Unpack::Limit(_)) => Expect::Limit,
        Err(Unpack::Malformed(_)) => Expect::Malformed,
        Err(other) => panic!("not an archive's fault: {other:?}"),
    }
}

/// One entry: a header with `name` (raw bytes, no rule applied) and `flag`,
/// then its data.
fn entry(name: &[u8], flag: u8, data: &[u8]) -> Vec<u8> {
    let mut out = raw_header(name, flag, data.len() as u64).to_vec();
    out.extend(padded(data));
    out
}

fn link(name: &str, flag: u8, target: &str) -> Vec<u8> {
    let mut block = raw_header(name.as_bytes(), flag, 0);
    block[157..157 + target.len()].copy_from_slice(target.as_bytes());
    checksum(&mut block);
    block.to_vec()
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    entry(b"PaxHeaders/x", b'x', &body)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

const SMALL: Limits = Limits {
    bytes: 1_000_000,
    entries: 100,
    bytes_rule: "inputs_max_mb",
};

type Case = (&'static str, Vec<u8>, Expect);

fn file(name: &str) -> Vec<u8> {
    entry(name.as_bytes(), b'0', b"data")
}

fn cases() -> Vec<Case> {
    [unpacked(), escapes(), specials_and_limits(), malformed()].concat()
}

fn unpacked() -> Vec<Case> {
    use Expect::Unpacked;
    vec![
        ("a plain file", file("a.txt"), Unpacked),
        ("gzip", gzip(&file("a.txt")), Unpacked),
        (
            "zstd",
            zstd::encode_all(file("a.txt").as_slice(), 3).unwrap(),
            Unpacked,
        ),
        ("an empty archive", Vec::new(), Unpacked),
        (
            "a name with control characters",
            file("a\u{1b}[31m\nb"),
            Unpacked,
        ),
        (
            "an inside symlink",
            cat(&[file("a"), link("b", b'2', "a")]),
            Unpacked,
        ),
        (
            "a leading-dots symlink",
            cat(&[file("a"), link("d/l", b'2', "../a")]),
            Unpacked,
        ),
        (
            "a hard link inside",
            cat(&[file("a"), link("b", b'1', "a")]),
            Unpacked,
        ),
    ]
}

fn escapes() -> Vec<Case> {
    use Expect::Escape;
    let through = cat(&[
        entry(b"sub/", b'5', b""),
        link("l", b'2', "sub"),
        file("l/f"),
    ]);
    vec![
        ("dot-dot", file("../evil"), Escape),
        ("absolute", file("/etc/evil"), Escape),
        ("dot-dot inside a path", file("a/../../evil"), Escape),
        ("a symlink up and out", link("up", b'2', "../.."), Escape),
        ("an absolute symlink", link("etc", b'2', "/etc"), Escape),
        ("a hard link out", link("h", b'1', "../outside"), Escape),
        (
            "a chain: a/b -> .., then through it",
            cat(&[link("a/b", b'2', ".."), link("a/b/c", b'2', "..")]),
            Escape,
        ),
        ("a file through a symlink", through, Escape),
        (
            "dots after a name in a target",
            cat(&[link("a/s", b'2', ".."), link("t", b'2', "a/s/..")]),
            Escape,
        ),
        (
            "a hard link to a symlink",
            cat(&[file("a"), link("s", b'2', "a"), link("h", b'1', "s")]),
            Escape,
        ),
        (
            "a PAX linkpath out",
            cat(&[pax(&[("linkpath", "../../x")]), link("l", b'2', "fine")]),
            Escape,
        ),
        (
            "a long dot-dot name",
            file(&format!("../{}", "x".repeat(90))),
            Escape,
        ),
    ]
}

fn specials_and_limits() -> Vec<Case> {
    use Expect::{Limit, Special};
    let mut gnu_huge = raw_header(b"huge", b'0', 0);
    gnu_huge[124..136].fill(0);
    gnu_huge[124] = 0x80;
    gnu_huge[131] = 0x02;
    checksum(&mut gnu_huge);
    let zeros = vec![0u8; 20_000_000];
    let many: Vec<Vec<u8>> = (0..150).map(|n| file(&format!("f{n}"))).collect();
    vec![
        ("a character device", link("dev/c", b'3', ""), Special),
        ("a block device", link("dev/b", b'4', ""), Special),
        ("a FIFO", link("fifo", b'6', ""), Special),
        (
            "a 1 GiB long name",
            raw_header(b"././@LongLink", b'L', 1 << 30).to_vec(),
            Limit,
        ),
        (
            "a 1 MiB PAX header",
            raw_header(b"pax", b'x', 1 << 20).to_vec(),
            Limit,
        ),
        (
            "a 300 KB PAX path",
            raw_header(b"pax", b'x', 300_000).to_vec(),
            Limit,
        ),
        (
            "a PAX size of 3 GB",
            cat(&[pax(&[("size", "3000000000")]), file("big")]),
            Limit,
        ),
        ("a base-256 size of 8 GiB", gnu_huge.to_vec(), Limit),
        (
            "a bomb by ratio",
            gzip(&entry(b"zeros", b'0', &zeros)),
            Limit,
        ),
        ("a bomb by count", many.concat(), Limit),
    ]
}

fn malformed() -> Vec<Case> {
    use Expect::Malformed;
    let mut bad_sum = raw_header(b"a", b'0', 0);
    bad_sum[0] = b'b';
    let mut corrupt_gz = gzip(&file("ok"));
    let middle = corrupt_gz.len() / 2;
    corrupt_gz[middle] ^= 0xff;
    let meta_run: Vec<Vec<u8>> = (0..9).map(|_| entry(b"g", b'g', b"")).collect();
    vec![
        (
            "a run of metadata entries",
            cat(&[meta_run.concat(), file("a")]),
            Malformed,
        ),
        ("a bad checksum", bad_sum.to_vec(), Malformed),
        (
            "cut off inside an entry",
            raw_header(b"a", b'0', 5000).to_vec(),
            Malformed,
        ),
        ("a corrupt gzip", corrupt_gz, Malformed),
        ("a GNU sparse file", entry(b"sparse", b'S', b""), Malformed),
        (
            "PAX sparse records",
            cat(&[pax(&[("GNU.sparse.size", "9")]), file("s")]),
            Malformed,
        ),
        (
            "a file over a folder",
            cat(&[entry(b"d/", b'5', b""), file("d")]),
            Malformed,
        ),
        (
            "an entry under a file",
            cat(&[file("f"), file("f/x")]),
            Malformed,
        ),
        (
            "a hard link to nothing",
            link("h", b'1', "missing"),
            Malformed,
        ),
    ]
}

/// Each of a folder's links, followed as far as it goes, stays in `root`.
fn assert_contained(root: &Path) {
    let root = root.canonicalize().unwrap();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.file_type().is_symlink() {
                if let Ok(real) = entry.path().canonicalize() {
                    assert!(real.starts_with(&root), "{:?} -> {real:?}", entry.path());
                }
            }
        }
    }
}

#[test]
fn every_hostile_archive_meets_its_expected_outcome() {
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut wrong = Vec::new();
    for (name, bytes, expected) in cases {
        let outer = tempfile::tempdir().unwrap();
        let inner = outer.path().join("in");
        std::fs::create_dir(&inner).unwrap();
        let result = unpack(bytes.as_slice(), &inner, SMALL, &CancellationToken::new());
        if outcome(&result) != expected {
            wrong.push(format!("{name}: {result:?}, expected {expected:?}"));
        }
        if let Err(Unpack::Escape(quoted) | Unpack::Special(quoted)) = &result {
            assert!(
                quoted.len() <= 210 && !quoted.contains('\u{1b}'),
                "{name}: {quoted}"
            );
        }
        let outside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().flatten().collect();
        assert_eq!(outside.len(), 1, "{name} wrote beside its folder");
        assert_contained(&inner);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn modes_lose_setuid_and_an_old_link_is_replaced_not_followed() {
    let outer = tempfile::tempdir().unwrap();
    let inner = outer.path().join("in");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(outer.path().join("victim"), "keep").unwrap();
    std::os::unix::fs::symlink("../victim", inner.join("name")).unwrap();
    let mut block = raw_header(b"name", b'0', 4);
    block[100..107].copy_from_slice(b"0004755");
    checksum(&mut block);
    let bytes = cat(&[block.to_vec(), padded(b"new!")]);
    unpack(bytes.as_slice(), &inner, SMALL, &CancellationToken::new()).unwrap();
    assert_eq!(
        std::fs::read_to_string(outer.path().join("victim")).unwrap(),
        "keep"
    );
    let meta = std::fs::symlink_metadata(inner.join("name")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o755
    );
}

#[test]
fn a_stop_ends_it_between_chunks() {
    let stop = CancellationToken::new();
    stop.cancel();
    let bytes = entry(b"a", b'0', &[1u8; 4096]);
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        unpack(bytes.as_slice(), dir.path(), SMALL, &stop),
        Err(Unpack::Stopped)
    ));
}

/// A hostile entry: a name of plain parts, `..` and `/`, of any kind, with a
/// link target of the same alphabet.
fn hostile_entry() -> impl Strategy<Value = (String, u8, String, usize)> {
    let part = prop_oneof!["[a-c]", Just("..".to_owned()), Just(".".to_owned())];
    let path = proptest::collection::vec(part, 1..5).prop_map(|p| p.join("/"));
    let absolute = prop_oneof![Just(String::new()), Just("/".to_owned())];
    (
        (absolute, path.clone()).prop_map(|(a, p)| a + &p),
        prop_oneof![Just(b'0'), Just(b'1'), Just(b'2'), Just(b'5')],
        path,
        0usize..3000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the entries, nothing is written outside the folder, no link in
    /// it leads out, and what it reports unpacking is what the entries said.
    #[test]
    fn never_a_write_outside_and_sizes_always_counted(
        entries in proptest::collection::vec(hostile_entry(), 1..12)
    ) {
        let outer = tempfile::tempdir().unwrap();
        let inner = outer.path().join("in");
        std::fs::create_dir(&inner).unwrap();
        let mut bytes = Vec::new();
        let mut sizes = 0u64;
        for (name, flag, target, size) in &entries {
            let data = if *flag == b'0' { vec![b'x'; *size] } else { Vec::new() };
            sizes += data.len() as u64;
            let mut block = raw_header(name.as_bytes(), *flag, data.len() as u64);
            block[157..157 + target.len()].copy_from_slice(target.as_bytes());
            checksum(&mut block);
            bytes.extend(block);
            bytes.extend(padded(&data));
        }
        let roomy = Limits { bytes: u64::MAX, entries: MAX_ENTRIES, bytes_rule: "" };
        let result = unpack(bytes.as_slice(), &inner, roomy, &CancellationToken::new());
        if let Ok(unpacked) = &result {
            prop_assert_eq!(unpacked.bytes, sizes);
            prop_assert_eq!(unpacked.entries, entries.len() as u64);
        }
        let outside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().flatten().collect();
        prop_assert_eq!(outside.len(), 1);
        assert_contained(&inner);
    }
}
