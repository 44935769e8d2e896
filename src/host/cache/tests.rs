use super::*;

#[test]
fn names_follow_the_etag() {
    let source = S3Location {
        bucket: "b".into(),
        key: "k.tar.gz".into(),
    };
    let a = volume_name(&source, "\"etag1\"", "");
    assert_eq!(a, volume_name(&source, "\"etag1\"", ""));
    assert_ne!(a, volume_name(&source, "\"etag2\"", ""));
    assert!(a.starts_with("deckhand-cache-"));
}
