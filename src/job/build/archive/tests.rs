//! Hostile builder archives: names that are not the build's, links, FIFOs,
//! oversize files, more than one image.

use std::path::Path;

use super::*;

const TAG: &str = "127.0.0.1:5000/ci/app:1.0";

/// A tar of `files` (name, bytes) at `dir/image.tar`.
fn archive(dir: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let path = dir.join("image.tar");
    let mut builder = tar::Builder::new(File::create(&path).unwrap());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.finish().unwrap();
    path
}

fn manifest(tags: &str) -> Vec<u8> {
    format!(r#"[{{"Config":"c.json","RepoTags":{tags},"Layers":["l.tar"]}}]"#).into_bytes()
}

fn refused(result: Result<File, ArchiveError>) -> String {
    match result {
        Err(ArchiveError::Refused(rule)) => rule,
        Err(other) => panic!("not refused by rule: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn an_archive_naming_only_the_first_tag_is_loaded_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(&format!("[\"{TAG}\"]"));
    let path = archive(dir.path(), &[("l.tar", b"layer"), ("manifest.json", &m)]);
    let mut file = open_checked(&path, TAG, 1 << 20).unwrap();
    let mut head = [0u8; 5];
    file.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"l.tar", "rewound to the first header");
    // No names at all is fine too: the agent tags it.
    let path = archive(dir.path(), &[("manifest.json", &manifest("null"))]);
    open_checked(&path, TAG, 1 << 20).unwrap();
}

#[test]
fn another_name_anywhere_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = "127.0.0.1:5000/ci/busybox:1.35.0";
    let m = manifest(&format!("[\"{TAG}\", \"{base}\"]"));
    let rule = refused(open_checked(
        &archive(dir.path(), &[("manifest.json", &m)]),
        TAG,
        1 << 20,
    ));
    assert!(rule.contains(base) && rule.contains("RepoTags"), "{rule}");

    let ok = manifest(&format!("[\"{TAG}\"]"));
    let repositories = br#"{"127.0.0.1:5000/ci/busybox":{"1.35.0":"abc"}}"#;
    let path = archive(
        dir.path(),
        &[("manifest.json", &ok), ("repositories", repositories)],
    );
    let rule = refused(open_checked(&path, TAG, 1 << 20));
    assert!(
        rule.contains("repositories") && rule.contains("busybox:1.35.0"),
        "{rule}"
    );

    let index = br#"{"manifests":[{"annotations":{"io.containerd.image.name":"127.0.0.1:5000/ci/busybox:1.35.0"}}]}"#;
    let path = archive(dir.path(), &[("manifest.json", &ok), ("index.json", index)]);
    assert!(refused(open_checked(&path, TAG, 1 << 20)).contains("index.json"));

    // A name with control characters is shown escaped.
    let m = manifest(r#"["evil\u001b[2J:1"]"#);
    let rule = refused(open_checked(
        &archive(dir.path(), &[("manifest.json", &m)]),
        TAG,
        1 << 20,
    ));
    assert!(!rule.contains('\u{1b}'), "{rule:?}");
}

#[test]
fn two_images_two_manifests_or_no_manifest_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let two = br#"[{"RepoTags":null},{"RepoTags":null}]"#;
    let rule = refused(open_checked(
        &archive(dir.path(), &[("manifest.json", two)]),
        TAG,
        1 << 20,
    ));
    assert!(rule.contains("2 images"), "{rule}");
    let m = manifest("null");
    let path = archive(
        dir.path(),
        &[("manifest.json", &m), ("./manifest.json", &m)],
    );
    assert!(refused(open_checked(&path, TAG, 1 << 20)).contains("twice"));
    let path = archive(dir.path(), &[("l.tar", b"x")]);
    assert!(refused(open_checked(&path, TAG, 1 << 20)).contains("no manifest.json"));
    let path = archive(dir.path(), &[("manifest.json", b"{not json")]);
    assert!(refused(open_checked(&path, TAG, 1 << 20)).contains("not JSON"));
}

#[test]
fn a_link_a_fifo_or_an_oversize_archive_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "host file").unwrap();
    let link = dir.path().join("link.tar");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    assert!(refused(open_checked(&link, TAG, 1 << 20)).contains("link"));

    let fifo = dir.path().join("fifo.tar");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(refused(open_checked(&fifo, TAG, 1 << 20)).contains("regular file"));

    let m = manifest("null");
    let path = archive(dir.path(), &[("manifest.json", &m), ("big", &[0u8; 4096])]);
    let rule = refused(open_checked(&path, TAG, 1000));
    assert!(rule.contains("image_build_max_mb"), "{rule}");

    let big = vec![b' '; (MAX_NAMES_BYTES + 1) as usize];
    let path = archive(dir.path(), &[("manifest.json", &big)]);
    assert!(refused(open_checked(&path, TAG, 10 << 20)).contains("over"));
}
