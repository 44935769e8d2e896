use super::*;

fn go() -> CancellationToken {
    CancellationToken::new()
}

const ROOMY: Limits = Limits {
    bytes: u64::MAX,
    entries: MAX_ENTRIES,
    bytes_rule: "",
};

fn link(path: &str, target: &str, kind: tar::EntryType) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(0);
    header.set_mode(0o777);
    header.set_path(path).unwrap();
    // set_link_name refuses `..` and absolute targets; write them raw.
    header.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target.as_bytes());
    header.set_cksum();
    builder.append(&header, std::io::empty()).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn refuses_links_that_lead_out() {
    use tar::EntryType::{Link, Symlink};
    for (path, target, kind) in [
        ("lib/up", "../../etc", Symlink),
        ("abs", "/etc/passwd", Symlink),
        ("hard", "../outside", Link),
    ] {
        let dir = tempfile::tempdir().unwrap();
        match unpack(
            link(path, target, kind).as_slice(),
            dir.path(),
            ROOMY,
            &go(),
        ) {
            Err(Unpack::Escape(entry)) => assert_eq!(entry, format!("\"{path}\"")),
            _ => panic!("{path} -> {target} was not refused"),
        }
    }
    // Inside the volume is fine.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    assert!(
        unpack(
            link("lib/sibling", "../b.txt", Symlink).as_slice(),
            dir.path(),
            ROOMY,
            &go()
        )
        .is_ok()
    );
}

#[test]
fn stops_at_its_limits() {
    let tar = archive(&[("a.txt", &[b'a'; 4096]), ("b.txt", &[b'b'; 4096])]);
    let dir = tempfile::tempdir().unwrap();
    let small = Limits {
        bytes: 5000,
        entries: 10,
        bytes_rule: "inputs_max_mb",
    };
    assert!(matches!(
        unpack(tar.as_slice(), dir.path(), small, &go()),
        Err(Unpack::Limit(_))
    ));
    let few = Limits {
        bytes: u64::MAX,
        entries: 1,
        bytes_rule: "",
    };
    assert!(matches!(
        unpack(tar.as_slice(), dir.path(), few, &go()),
        Err(Unpack::Limit(_))
    ));
}

fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        // set_path refuses `..`; write the name raw, as a hostile archive would.
        header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn unpacks_plain_gzip_and_zstd() {
    let tar = archive(&[("lib/a.txt", b"alpha"), ("b.txt", b"beta")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(tar.as_slice(), 3).unwrap();
    for bytes in [tar.clone(), gz, zst] {
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack(bytes.as_slice(), dir.path(), ROOMY, &go())
            .ok()
            .unwrap();
        assert_eq!(
            unpacked,
            Unpacked {
                entries: 2,
                bytes: 9
            }
        );
        assert_eq!(
            std::fs::read(dir.path().join("lib/a.txt")).unwrap(),
            b"alpha"
        );
    }
}

#[test]
fn refuses_entries_that_escape() {
    for bad in ["../evil.txt", "lib/../../evil.txt", "/etc/evil.txt"] {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("volume");
        std::fs::create_dir(&inner).unwrap();
        let tar = archive(&[("ok.txt", b"fine"), (bad, b"evil")]);
        match unpack(tar.as_slice(), &inner, ROOMY, &go()) {
            Err(Unpack::Escape(entry)) => assert_eq!(entry, format!("\"{bad}\"")),
            _ => panic!("{bad} was not refused"),
        }
        assert!(!dir.path().join("evil.txt").exists());
    }
}

#[test]
fn refuses_device_files_and_fifos() {
    use tar::EntryType::{Block, Char, Fifo};
    for kind in [Char, Block, Fifo] {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o666);
        header.set_path("dev/thing").unwrap();
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
        let tar = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        match unpack(tar.as_slice(), dir.path(), ROOMY, &go()) {
            Err(Unpack::Special(entry)) => assert_eq!(entry, "\"dev/thing\""),
            other => panic!("{kind:?} was not refused: {other:?}"),
        }
        assert!(!dir.path().join("dev/thing").exists());
    }
}

#[path = "corpus.rs"]
mod corpus;
