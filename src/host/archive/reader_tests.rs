use std::path::Path;

use super::*;
use proptest::prelude::*;

/// A raw 512-byte header with `name`, `flag` and `size` (octal), checksummed.
pub(crate) fn raw_header(name: &[u8], flag: u8, size: u64) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    block[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    block[100..107].copy_from_slice(b"0000644");
    let size = format!("{size:011o}");
    block[124..124 + size.len()].copy_from_slice(size.as_bytes());
    block[136..147].copy_from_slice(b"00000000000");
    block[156] = flag;
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    checksum(&mut block);
    block
}

pub(crate) fn checksum(block: &mut [u8; BLOCK]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
}

/// `data` padded to whole blocks.
pub(crate) fn padded(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

/// A PAX record `key=value`.
pub(crate) fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    // The length counts its own digits.
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

fn all(bytes: &[u8]) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
    let mut reader = TarReader::new(bytes);
    let mut out = Vec::new();
    while let Some(header) = reader.next_header()? {
        let mut data = Vec::new();
        reader.read_to_end(&mut data)?;
        out.push((header, data));
    }
    Ok(out)
}

#[test]
fn reads_what_the_tar_crate_writes_long_names_included() {
    let mut builder = tar::Builder::new(Vec::new());
    let long = format!("{}/file.txt", "d".repeat(300));
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o755);
    header.set_mtime(1_700_000_000);
    builder
        .append_data(&mut header, &long, &b"hello"[..])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder
        .append_link(&mut header, "link", format!("{}/x", "t".repeat(200)))
        .unwrap();
    let bytes = builder.into_inner().unwrap();
    let read = all(&bytes).unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].0.path, PathBuf::from(&long));
    assert_eq!(read[0].0.kind, Kind::File);
    assert_eq!(read[0].0.mode, 0o755);
    assert_eq!(read[0].0.mtime, 1_700_000_000);
    assert_eq!(read[0].1, b"hello");
    assert_eq!(read[1].0.kind, Kind::Symlink);
    assert_eq!(
        read[1].0.link.as_deref(),
        Some(Path::new(&format!("{}/x", "t".repeat(200))))
    );
}

#[test]
fn a_metadata_entry_over_the_cap_is_refused_before_it_is_read() {
    // Claims a 1 GiB long name; only its header exists.
    let bytes = raw_header(b"././@LongLink", b'L', 1 << 30);
    match all(&bytes) {
        Err(TarError::MetadataTooLarge { size }) => assert_eq!(size, 1 << 30),
        other => panic!("{other:?}"),
    }
    let bytes = raw_header(b"pax", b'x', MAX_METADATA_BYTES + 1);
    assert!(matches!(
        all(&bytes),
        Err(TarError::MetadataTooLarge { .. })
    ));
}

#[test]
fn a_pax_size_is_the_size() {
    let record = pax_record("size", "3000000000");
    let mut bytes = raw_header(b"pax", b'x', record.len() as u64).to_vec();
    bytes.extend(padded(&record));
    bytes.extend(raw_header(b"big.bin", b'0', 0));
    let mut reader = TarReader::new(bytes.as_slice());
    let header = reader.next_header().unwrap().unwrap();
    assert_eq!(header.size, 3_000_000_000);
    // And the data is not there: reading it says so.
    let mut sink = Vec::new();
    assert!(reader.read_to_end(&mut sink).is_err());
}

#[test]
fn base_256_sizes_are_read_and_negative_ones_refused() {
    let mut block = raw_header(b"huge", b'0', 0);
    block[124..136].fill(0);
    block[124] = 0x80;
    block[131] = 0x02; // 2 << 32 = 8 GiB
    checksum(&mut block);
    let mut reader = TarReader::new(&block[..]);
    assert_eq!(reader.next_header().unwrap().unwrap().size, 2 << 32);
    block[124] = 0xff;
    checksum(&mut block);
    assert!(matches!(
        TarReader::new(&block[..]).next_header(),
        Err(TarError::Malformed(_))
    ));
}

#[test]
fn a_run_of_metadata_entries_is_refused() {
    let mut bytes = Vec::new();
    for _ in 0..=MAX_METADATA_IN_A_ROW {
        bytes.extend(raw_header(b"g", b'g', 0));
    }
    bytes.extend(raw_header(b"a", b'0', 0));
    assert!(matches!(all(&bytes), Err(TarError::MetadataRun)));
}

#[test]
fn bad_checksums_truncations_and_sparse_files_are_refused() {
    let mut block = raw_header(b"a", b'0', 0);
    block[0] = b'b';
    assert!(matches!(all(&block), Err(TarError::Malformed(_))));
    let cut = raw_header(b"a", b'0', 1000);
    assert!(all(&cut).is_err());
    assert!(matches!(all(&cut[..300]), Err(TarError::Truncated)));
    let record = pax_record("GNU.sparse.size", "10");
    let mut bytes = raw_header(b"pax", b'x', record.len() as u64).to_vec();
    bytes.extend(padded(&record));
    bytes.extend(raw_header(b"sparse", b'0', 0));
    assert!(matches!(all(&bytes), Err(TarError::Malformed(_))));
}

fn arbitrary_entry() -> impl Strategy<Value = (String, Vec<u8>, bool)> {
    (
        "[a-z]{1,20}(/[a-z][a-z.]{0,39}){0,8}",
        proptest::collection::vec(any::<u8>(), 0..3000),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the tar crate writes (GNU or PAX long names), each entry comes
    /// back with its path, size and data.
    #[test]
    fn round_trips_generated_archives(entries in proptest::collection::vec(arbitrary_entry(), 1..12)) {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data, gnu) in &entries {
            let mut header = if *gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, path, data.as_slice()).unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        let read = all(&bytes).unwrap();
        prop_assert_eq!(read.len(), entries.len());
        for ((header, data), (path, want, _)) in read.iter().zip(&entries) {
            prop_assert_eq!(&header.path, &PathBuf::from(path));
            prop_assert_eq!(header.size, want.len() as u64);
            prop_assert_eq!(data, want);
        }
    }

    /// Random bytes end in an entry or an error, never a panic.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = all(&bytes);
    }
}
